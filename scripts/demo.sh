#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the demo on built-in synthetic data (~15-20 min on a CPU).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ahnet demo "$@"
