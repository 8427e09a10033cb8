/*
 * uring_connect - test helper: perform one TCP connect via io_uring.
 *
 * io_uring connects do not go through the connect() syscall and, depending
 * on the mode, run in a kernel worker thread rather than in the submitting
 * task, so they exercise tracer code paths that plain connect() does not.
 *
 * Usage: uring_connect MODE ADDR PORT
 *   MODE  plain   default submission (issued inline, completed via poll)
 *         async   IOSQE_ASYNC: forced out to an iou-wrk worker thread
 *         sqpoll  IORING_SETUP_SQPOLL: issued by the iou-sqp kernel thread
 *   ADDR  IPv4 or IPv6 literal
 *   PORT  1..65535
 *
 * Prints "pid=<pid> res=<cqe res> lport=<local port>" and exits 0, also
 * when the connect itself failed (res is then -errno): the caller decides
 * what outcome it expected.  Exits 1 on io_uring/socket setup failure and
 * 2 on bad arguments.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Long enough that the SQ thread is still polling when our single SQE is
 * queued, so the submission is really issued by the SQ thread. */
#define SQPOLL_IDLE_MS 2000

static const char *prog = "uring_connect";

static void usage_error(const char *msg)
{
	fprintf(stderr, "%s: %s; usage: %s plain|async|sqpoll ADDR PORT\n",
		prog, msg, prog);
	exit(2);
}

static void fail(const char *what, int err)
{
	fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(err));
	exit(1);
}

static socklen_t parse_addr(const char *s, int port,
			    struct sockaddr_storage *ss)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, s, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		return sizeof(*sin);
	}
	if (inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		return sizeof(*sin6);
	}
	return 0;
}

static unsigned local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return 0;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return 0;
}

int main(int argc, char **argv)
{
	struct io_uring_params params;
	struct sockaddr_storage addr;
	struct io_uring ring;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	socklen_t addrlen;
	int async = 0, sqpoll = 0;
	int fd, ret, res;
	char *end;
	long port;

	if (argc != 4)
		usage_error("expected 3 arguments");

	if (strcmp(argv[1], "plain") == 0)
		;
	else if (strcmp(argv[1], "async") == 0)
		async = 1;
	else if (strcmp(argv[1], "sqpoll") == 0)
		sqpoll = 1;
	else
		usage_error("MODE must be plain, async or sqpoll");

	errno = 0;
	port = strtol(argv[3], &end, 10);
	if (errno || end == argv[3] || *end != '\0' || port < 1 || port > 65535)
		usage_error("invalid port");

	addrlen = parse_addr(argv[2], (int)port, &addr);
	if (addrlen == 0)
		usage_error("ADDR must be an IPv4 or IPv6 literal");

	memset(&params, 0, sizeof(params));
	if (sqpoll) {
		params.flags = IORING_SETUP_SQPOLL;
		params.sq_thread_idle = SQPOLL_IDLE_MS;
	}
	/* liburing returns -errno rather than setting errno. */
	ret = io_uring_queue_init_params(4, &ring, &params);
	if (ret < 0)
		fail("io_uring_queue_init_params", -ret);

	fd = socket(addr.ss_family, SOCK_STREAM, 0);
	if (fd < 0)
		fail("socket", errno);

	sqe = io_uring_get_sqe(&ring);
	if (!sqe) {
		fprintf(stderr, "%s: io_uring_get_sqe: submission queue full\n",
			prog);
		return 1;
	}
	/* addr must stay valid until the kernel has consumed the SQE; with
	 * SQPOLL that is after io_uring_submit() returns, so it lives in
	 * main's frame rather than a helper's. */
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&addr, addrlen);
	if (async)
		io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);

	ret = io_uring_submit(&ring);
	if (ret < 0)
		fail("io_uring_submit", -ret);
	/* With SQPOLL, submit just publishes the SQE (0 or 1 may be reported
	 * depending on timing), so only a real error is treated as failure. */
	if (ret == 0 && !sqpoll) {
		fprintf(stderr, "%s: io_uring_submit: nothing submitted\n",
			prog);
		return 1;
	}

	do {
		ret = io_uring_wait_cqe(&ring, &cqe);
	} while (ret == -EINTR);
	if (ret < 0)
		fail("io_uring_wait_cqe", -ret);

	res = cqe->res;
	io_uring_cqe_seen(&ring, cqe);

	printf("pid=%d res=%d lport=%u\n", (int)getpid(), res, local_port(fd));

	close(fd);
	io_uring_queue_exit(&ring);
	return 0;
}
