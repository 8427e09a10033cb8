/* SPDX-License-Identifier: GPL-2.0 */
/*
 * connect() calls that fail before SYN_SENT. The route lookup, a cgroup
 * connect4/connect6 program and the LSM hooks can all refuse a connect
 * before the socket reaches SYN_SENT, and then inet_sock_set_state never
 * fires. Classic syscall tracepoints: their
 * programs run for connect() only (every other syscall pays only the slow
 * path the kernel takes while any syscall tracepoint is on). They read
 * memory through probe reads only, so one program serves kernels with and
 * without BTF of their own.
 */
#ifndef CONNECT_CALLS_BPF_H
#define CONNECT_CALLS_BPF_H

/* errno values (the same on every Linux architecture but alpha, mips,
 * parisc and sparc, which this tool does not build for). */
#define EBADF 9
#define EFAULT 14
#define ENOTSOCK 88
#define EAFNOSUPPORT 97
#define EISCONN 106
#define EALREADY 114
#define EINPROGRESS 115

/* connect() calls are followed from entry to return (the syscall programs
 * are attached), for the attempts that fail before SYN_SENT. */
const volatile bool follow_connect_calls = false;
/* connect() calls that could not be followed (connect_calls full): a
 * failure before SYN_SENT of one of them would not be seen. */
__u64 connect_call_failures = 0;

/* connect() calls under way to an IPv4 or IPv6 address, by thread: the
 * attempt as far as the call's own arguments tell it, and the descriptor.
 * Removed when the socket reaches SYN_SENT, where the attempt is reported
 * as usual, or when the call returns; what is left then failed before
 * SYN_SENT. Whether the descriptor is a TCP socket is looked up only then:
 * that walk through the task's file table was most of what following a
 * call cost. */
struct connect_call {
	struct event e;
	__s32 fd;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct connect_call);
} connect_calls SEC(".maps");

/* When the connect() call tid is in began (its clock read at entry), 0 if
 * none is followed. */
static __always_inline __u64 connect_call_start(__u32 tid)
{
	const struct connect_call *call = bpf_map_lookup_elem(&connect_calls, &tid);

	return call ? call->e.ts_ns : 0;
}

/* Values >= 512 are the kernel's internal restart codes. */
#define MAX_ERRNO_REPORTED 511
#define SIN6_LEN_RFC2133 24
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* The socket behind a descriptor of the current task, NULL if it is none. */
static __always_inline const struct sock *socket_of_fd(int fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	const struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	const struct file *file = NULL;
	const struct socket *sock;

	if (fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	return BPF_CORE_READ(sock, sk);
}

/* The destination from connect()'s own sockaddr (the socket holds none
 * yet). False for anything but an IPv4 or IPv6 address connect() could
 * take. */
static __always_inline bool read_call_destination(const void *uaddr, int len, struct event *e)
{
	struct sockaddr_in6 sa = {};

	/* Constant sizes, which the verifier needs; tcp_v6_connect() takes an
	 * address without sin6_scope_id (SIN6_LEN_RFC2133, 24 bytes). */
	if (len < (int)sizeof(struct sockaddr_in))
		return false;
	if (bpf_probe_read_user(&sa, len >= (int)sizeof(sa) ? sizeof(sa) :
				len >= SIN6_LEN_RFC2133 ? SIN6_LEN_RFC2133 :
				sizeof(struct sockaddr_in), uaddr))
		return false;
	if (sa.sin6_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)&sa;

		e->family = 4;
		*(__u32 *)e->daddr = in->sin_addr.s_addr;
	} else if (sa.sin6_family == AF_INET6 && len >= SIN6_LEN_RFC2133) {
		__builtin_memcpy(e->daddr, &sa.sin6_addr, sizeof(e->daddr));
		e->family = 6;
		if (is_v4_mapped(e->daddr)) {
			*(__u32 *)e->daddr = *(__u32 *)&e->daddr[12];
			__builtin_memset(&e->daddr[4], 0, sizeof(e->daddr) - 4);
			e->family = 4;
		}
	} else {
		return false;
	}
	e->dport = bpf_ntohs(sa.sin6_port); /* sin_port is at the same offset */
	return true;
}

/* The source the socket was bound to, if it was (0 otherwise). */
static __always_inline void read_bound_source(const struct sock *sk, struct event *e)
{
	const struct sock_common *skc = &sk->__sk_common;

	if (e->family == 4) {
		*(__u32 *)e->saddr = BPF_CORE_READ(skc, skc_rcv_saddr);
	} else {
		struct in6_addr saddr = BPF_CORE_READ(skc, skc_v6_rcv_saddr);

		__builtin_memcpy(e->saddr, &saddr, sizeof(e->saddr));
	}
	e->lport = local_port(sk);
}

/* Whether connect() failed an attempt, not the call itself (an address of
 * the wrong family or out of reach, a socket already connected or
 * connecting). EINVAL is an attempt's: addresses too short were never
 * followed, and a blackhole route gives EINVAL. */
static __always_inline bool attempt_failed(long ret)
{
	long err = -ret;

	return ret < 0 && err <= MAX_ERRNO_REPORTED && err != EAFNOSUPPORT &&
	       err != EFAULT && err != EISCONN && err != EALREADY && err != EINPROGRESS &&
	       err != EBADF && err != ENOTSOCK;
}

#endif
