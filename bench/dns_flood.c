/*
 * dns_flood - benchmark workload for the cost of `tcpconnect -d`.
 *
 * Sends a DNS response (one question, A answers) from a UDP socket bound to
 * SOURCE:SPORT to a second socket on loopback and receives it, in a tight
 * loop for a fixed duration, then prints the number of datagrams per second.
 * Every datagram passes netif_receive_skb, where `tcpconnect -d` inspects
 * it; with SPORT 53 it is also copied to user space and parsed. Comparing
 * rates with and without the tracer gives the per-packet cost.
 *
 * Usage: dns_flood [-6] [-a SOURCE] [-s SPORT] [-b BYTES] [-d SECONDS] [-r RATE]
 *   -6  IPv6 (default source ::1) instead of IPv4 (default 127.0.0.1)
 *   -s  source port, default 53; any other port measures non-DNS traffic
 *   -b  UDP payload size (rounded down to whole answers), default 100
 *   -r  datagrams per second, default unlimited: a rate the tracer keeps up
 *       with measures the cost of every answer copied and parsed
 *
 * Build: cc -O2 -Wall -Wextra -o build/dns_flood bench/dns_flood.c
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PAYLOAD 65000
#define QUESTION_END 28 /* header + "\5bench\4test\0" + type + class */
#define ANSWER_SIZE 16  /* name pointer, type, class, ttl, rdlength, IPv4 */
#define BATCH 16

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* A well-formed response, so that with the tracer running every datagram
 * costs the full parse in user space, as a real answer would. */
static size_t build_response(uint8_t *p, size_t want)
{
	static const uint8_t question[] = {
		0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0,
		5, 'b', 'e', 'n', 'c', 'h', 4, 't', 'e', 's', 't', 0,
		0, 1, 0, 1,
	};
	size_t answers = want > QUESTION_END ? (want - QUESTION_END) / ANSWER_SIZE : 0;
	size_t i;

	if (answers > 0xffff)
		answers = 0xffff;
	memcpy(p, question, sizeof(question));
	p[6] = answers >> 8;
	p[7] = answers & 0xff;
	for (i = 0; i < answers; i++) {
		uint8_t *a = p + QUESTION_END + i * ANSWER_SIZE;
		const uint8_t rr[] = {
			0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4,
			198, 18, (uint8_t)(i >> 8), (uint8_t)i,
		};

		memcpy(a, rr, sizeof(rr));
	}
	return QUESTION_END + answers * ANSWER_SIZE;
}

int main(int argc, char **argv)
{
	static uint8_t payload[MAX_PAYLOAD], buf[MAX_PAYLOAD];
	struct sockaddr_storage src = {0}, dst = {0};
	socklen_t len = sizeof(dst);
	const char *source = NULL;
	int family = AF_INET, sport = 53, bytes = 100, opt, tx, rx;
	double seconds = 3, rate = 0, start, elapsed;
	unsigned long sent = 0;
	size_t size;

	while ((opt = getopt(argc, argv, "6a:s:b:d:r:")) != -1) {
		switch (opt) {
		case '6': family = AF_INET6; break;
		case 'a': source = optarg; break;
		case 's': sport = atoi(optarg); break;
		case 'b': bytes = atoi(optarg); break;
		case 'd': seconds = atof(optarg); break;
		case 'r': rate = atof(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-6] [-a SOURCE] [-s SPORT] [-b BYTES] "
					"[-d SECONDS] [-r RATE]\n", argv[0]);
			return 2;
		}
	}
	if (bytes < QUESTION_END || bytes > MAX_PAYLOAD) {
		fprintf(stderr, "-b must be between %d and %d\n", QUESTION_END, MAX_PAYLOAD);
		return 2;
	}
	if (!source)
		source = family == AF_INET6 ? "::1" : "127.0.0.1";
	if (family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(sport);
		if (inet_pton(AF_INET6, source, &s6->sin6_addr) != 1)
			die("inet_pton");
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&src;

		s4->sin_family = AF_INET;
		s4->sin_port = htons(sport);
		if (inet_pton(AF_INET, source, &s4->sin_addr) != 1)
			die("inet_pton");
	}
	memcpy(&dst, &src, sizeof(src));
	((struct sockaddr_in *)&dst)->sin_port = 0; /* same offset in both families */

	tx = socket(family, SOCK_DGRAM, 0);
	rx = socket(family, SOCK_DGRAM, 0);
	if (tx < 0 || rx < 0)
		die("socket");
	if (bind(tx, (struct sockaddr *)&src, sizeof(src)) < 0)
		die("bind source");
	if (bind(rx, (struct sockaddr *)&dst, sizeof(dst)) < 0 ||
	    getsockname(rx, (struct sockaddr *)&dst, &len) < 0)
		die("bind receiver");
	if (connect(tx, (struct sockaddr *)&dst, len) < 0)
		die("connect");
	size = build_response(payload, bytes);

	start = now();
	do {
		/* The clock is read once per batch: per datagram it would be a
		 * visible share of the loop. */
		for (int i = 0; i < BATCH; i++) {
			if (send(tx, payload, size, 0) < 0)
				die("send");
			if (recv(rx, buf, sizeof(buf), 0) < 0)
				die("recv");
		}
		sent += BATCH;
		elapsed = now() - start;
		if (rate > 0 && sent / rate > elapsed) {
			double pause = sent / rate - elapsed;
			struct timespec ts = {(time_t)pause, (long)((pause - (time_t)pause) * 1e9)};

			nanosleep(&ts, NULL);
			elapsed = now() - start;
		}
	} while (elapsed < seconds);
	printf("%zu-byte datagrams from port %d: %.0f/s\n", size, sport, sent / elapsed);
	return 0;
}
