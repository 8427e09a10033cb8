// SPDX-License-Identifier: GPL-2.0
/*
 * The cheapest program that can sit on the tracepoint tcpconnect uses: what
 * attaching anything there costs a connect, the floor under tcpconnect's own
 * overhead in the benchmark.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(noop, const struct sock *sk, int oldstate, int newstate)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
