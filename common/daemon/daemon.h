/*
 * daemon: the process lifecycle shared by upseal-client and
 * upseal-server: command line, config, tunnels, signals (TERM/INT drain
 * and exit 0; PIPE ignored) and a clean shutdown of the event loop.
 */
#ifndef UPSEAL_DAEMON_H
#define UPSEAL_DAEMON_H

#include "config.h"

#define UPSEAL_VERSION "0.1.0"

/* The whole program for role; returns the process exit status. */
int daemon_main(int argc, char **argv, enum cfg_role role);

#endif
