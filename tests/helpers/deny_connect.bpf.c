// SPDX-License-Identifier: GPL-2.0
/* Refuses every connect() of the cgroup it is attached to, as a policy
 * agent's cgroup program would: connect() then fails with EPERM before the
 * socket reaches SYN_SENT. For tests/test_failures.py. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("cgroup/connect4")
int deny_connect4(struct bpf_sock_addr *ctx)
{
	return 0;
}

SEC("cgroup/connect6")
int deny_connect6(struct bpf_sock_addr *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
