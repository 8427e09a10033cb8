/*
 * connect_loop - benchmark workload for tcpconnect overhead measurements.
 *
 * Issues TCP connect() calls on loopback in a tight loop for a fixed
 * duration and prints the number of connect() calls made.  Comparing the
 * count with and without the tracer attached gives the per-connect cost
 * of tracing.
 *
 * Usage: connect_loop [-6] [-l] -p PORT -d SECONDS
 *   -6  use AF_INET6 / ::1 instead of AF_INET / 127.0.0.1
 *   -l  run a listener on PORT so that connects succeed; otherwise the
 *       port is expected to be closed and every connect is refused
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Reading the clock every iteration would be a measurable share of the
 * loop cost, so it is only consulted once per this many connects. */
#define CLOCK_CHECK_MASK 255u

/* The accept thread can fall briefly behind the connect loop; a full
 * accept queue makes the kernel drop SYNs, which stalls connect() for a
 * whole SYN retransmit timeout and ruins the measurement. */
#define LISTEN_BACKLOG 65535

static const char *prog = "connect_loop";

static void usage_error(const char *msg)
{
	fprintf(stderr, "%s: %s; usage: %s [-6] [-l] -p PORT -d SECONDS\n",
		prog, msg, prog);
	exit(2);
}

static void die_errno(const char *what, int err)
{
	fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(err));
	exit(1);
}

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static socklen_t make_loopback_addr(struct sockaddr_storage *ss, int v6,
				    uint16_t port)
{
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		sin6->sin6_addr = in6addr_loopback;
		return sizeof(*sin6);
	}

	struct sockaddr_in *sin = (struct sockaddr_in *)ss;

	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sizeof(*sin);
}

static void *accept_loop(void *arg)
{
	int lfd = *(int *)arg;

	for (;;) {
		int fd = accept(lfd, NULL, NULL);

		if (fd >= 0) {
			close(fd);
			continue;
		}
		/* The client resets every connection, so a connection may
		 * already be dead by the time we get to it; that is normal
		 * here and not a reason to stop serving. */
		if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
			continue;
		die_errno("accept", errno);
	}
	return NULL;
}

static void start_listener(const struct sockaddr_storage *ss, socklen_t len)
{
	static int lfd;
	int one = 1;
	pthread_t tid;
	int err;

	lfd = socket(ss->ss_family, SOCK_STREAM, 0);
	if (lfd < 0)
		die_errno("listener socket", errno);
	/* Lets back-to-back benchmark runs rebind the port while the
	 * previous run's server-side sockets are still winding down. */
	if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		die_errno("setsockopt(SO_REUSEADDR)", errno);
	if (bind(lfd, (const struct sockaddr *)ss, len) < 0)
		die_errno("bind", errno);
	if (listen(lfd, LISTEN_BACKLOG) < 0)
		die_errno("listen", errno);

	err = pthread_create(&tid, NULL, accept_loop, &lfd);
	if (err)
		die_errno("pthread_create", err);
	/* Never joined: the thread dies with the process when main returns. */
	pthread_detach(tid);
}

static int parse_port(const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < 1 || v > 65535)
		return -1;
	return (int)v;
}

static double parse_duration(const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	/* The upper bound keeps the deadline arithmetic meaningful. */
	if (errno || end == s || *end != '\0' || !(v > 0) || v > 1e6)
		return -1;
	return v;
}

int main(int argc, char **argv)
{
	struct sockaddr_storage addr;
	socklen_t addrlen;
	const struct linger rst_close = { .l_onoff = 1, .l_linger = 0 };
	unsigned long long count = 0;
	double duration = -1, deadline;
	int v6 = 0, listen_mode = 0, port = -1;
	int opt;

	opterr = 0; /* we print our own one-line usage error */
	while ((opt = getopt(argc, argv, "6lp:d:")) != -1) {
		switch (opt) {
		case '6':
			v6 = 1;
			break;
		case 'l':
			listen_mode = 1;
			break;
		case 'p':
			port = parse_port(optarg);
			if (port < 0)
				usage_error("invalid port");
			break;
		case 'd':
			duration = parse_duration(optarg);
			if (duration < 0)
				usage_error("invalid duration");
			break;
		default:
			usage_error("invalid option");
		}
	}
	if (optind != argc)
		usage_error("unexpected argument");
	if (port < 0)
		usage_error("-p PORT is required");
	if (duration < 0)
		usage_error("-d SECONDS is required");

	addrlen = make_loopback_addr(&addr, v6, (uint16_t)port);
	if (listen_mode)
		start_listener(&addr, addrlen);

	deadline = now_seconds() + duration;
	for (;;) {
		int fd, rc, err;

		if ((count & CLOCK_CHECK_MASK) == 0 && now_seconds() >= deadline)
			break;

		fd = socket(addr.ss_family, SOCK_STREAM, 0);
		if (fd < 0)
			die_errno("socket", errno);

		rc = connect(fd, (const struct sockaddr *)&addr, addrlen);
		err = errno;
		count++;

		if (listen_mode) {
			if (rc < 0)
				die_errno("connect", err);
			/* An abortive close skips TIME_WAIT; otherwise each
			 * connect pins an ephemeral port for 60s and the
			 * loop hits EADDRNOTAVAIL within a second or two. */
			if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst_close,
				       sizeof(rst_close)) < 0)
				die_errno("setsockopt(SO_LINGER)", errno);
		} else if (rc == 0) {
			fprintf(stderr,
				"%s: connect to port %d unexpectedly succeeded "
				"(use -l, or a closed port)\n", prog, port);
			exit(1);
		} else if (err != ECONNREFUSED) {
			die_errno("connect", err);
		}
		close(fd);
	}

	printf("%llu\n", count);
	return 0;
}
