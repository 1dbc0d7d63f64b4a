/*
 * upseal-server: accepts pinned mutual TLS from upseal-client and
 * forwards to the backend on loopback or a unix socket.
 */
#include "daemon.h"

int main(int argc, char **argv)
{
	return daemon_main(argc, argv, CFG_SERVER);
}
