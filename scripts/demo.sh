#!/usr/bin/env bash
# The main job on a fresh machine: set up, then show the paper's networks (Table 2).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ahnet summary "$@"
