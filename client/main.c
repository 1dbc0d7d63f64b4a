/*
 * upseal-client: accepts plaintext next to the proxy (loopback or a unix
 * socket) and carries it to upseal-server over pinned mutual TLS.
 */
#include "daemon.h"

int main(int argc, char **argv)
{
	return daemon_main(argc, argv, CFG_CLIENT);
}
