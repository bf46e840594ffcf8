#!/bin/sh
# mpirun's launch agent for the network-namespace test hosts of launch/netns-hosts.sh (used as
# `--mca plm_rsh_agent launch/netns-agent.sh` in place of ssh): runs the command inside the host's namespace.
#   netns-agent.sh HOST CMD...
host=$1; shift
exec ip netns exec "$host" sh -c "$*"
