/*
 * syscall_loop - the cost of a cheap system call, for bench/syscall_cost.py.
 *
 * While any syscall tracepoint is enabled, every task's every system call
 * takes the kernel's slower entry and exit path. This loop makes N getppid()
 * calls (which do almost nothing else) and prints the CPU nanoseconds one
 * took, so runs with and without the tracer show what that path costs.
 *
 * Usage: syscall_loop N
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct timespec start, end;
	long n = argc > 1 ? atol(argv[1]) : 0;

	if (n <= 0) {
		fprintf(stderr, "usage: syscall_loop N (N > 0)\n");
		return 2;
	}
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &start);
	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &end);
	printf("%.2f\n", ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / n);
	return 0;
}
