/*
 * libgarage-ipfs-nodelay: an LD_PRELOAD shim that sets TCP_NODELAY on every
 * TCP socket a process creates.
 *
 * Garage 2.5 never sets TCP_NODELAY, so small RPC messages wait for the
 * peer's delayed ACK (~40 ms on Linux). Setting the option right after
 * socket() covers both sides: connect()ed sockets keep it, and on Linux an
 * accept()ed socket inherits it from its listening socket.
 *
 * Build: cc -shared -fPIC -O2 -o libgarage-ipfs-nodelay.so nodelay.c -ldl
 * Use:   LD_PRELOAD=/path/to/libgarage-ipfs-nodelay.so garage server
 *
 * SPDX-License-Identifier: AGPL-3.0-or-later
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

typedef int (*socket_fn)(int, int, int);

int socket(int domain, int type, int protocol)
{
    static socket_fn real_socket;
    if (!real_socket)
        real_socket = (socket_fn)dlsym(RTLD_NEXT, "socket");
    int fd = real_socket(domain, type, protocol);
    int base_type = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0 && (domain == AF_INET || domain == AF_INET6) && base_type == SOCK_STREAM) {
        int one = 1;
        /* Best effort: a failure leaves the socket as it would have been. */
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}
