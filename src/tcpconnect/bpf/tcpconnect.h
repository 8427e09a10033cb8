/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The records the BPF side shares with user space. Each struct here is
 * mirrored exactly once in src/tcpconnect/events.py; tests/test_events.py
 * compares the mirror against the BTF of the compiled object.
 */
#ifndef TCPCONNECT_H
#define TCPCONNECT_H

#define TASK_COMM_LEN 16
/* The EDNS(0) UDP size resolvers use since DNS Flag Day 2020, above bcc's
 * 512: an answer cut short cannot be parsed, so its addresses would be lost.
 * Only the answer's own length is copied; the cap costs ring space. */
#define DNS_PAYLOAD_MAX 1232

/* Values of struct event's outcome besides the TCP states (all below 16).
 * OUTCOME_NO_SYN: connect() failed before the socket reached SYN_SENT (no
 * route, a cgroup BPF program or an LSM said no), so no SYN was sent;
 * `error` is connect()'s errno. OUTCOME_END_UNSEEN: the socket was destroyed,
 * or connected again, with its attempt still parked, so the program run that
 * would have seen the attempt end was skipped by the kernel; `error` is the
 * socket's error if it still had one. An enum, not a define, so that it is in the object's
 * BTF, where tests check its mirror. */
enum outcome_code {
	OUTCOME_NO_SYN = 256,
	OUTCOME_END_UNSEEN = 257,
};

/* The kernel-side filters, each an index of the per-CPU `filtered` counts
 * of the attempts it removed (only the first filter that rejects an attempt
 * counts it). FILTERED_NONE is no filter: the attempt was wanted. */
enum filter_kind {
	FILTERED_NONE = 0,
	FILTERED_PID,
	FILTERED_UID,
	FILTERED_COMM,
	FILTERED_FAMILY,
	FILTERED_PORT,
	FILTERED_DADDR,
	FILTERED_SADDR,
	FILTERED_NETNS,
	FILTERED_CGROUP,
	FILTERED_MNTNS,
	FILTERED_KINDS,
};

/* struct event's answer_kind: the packet that answered an attempt with an
 * error, as this host received it (see answers.bpf.h). An ICMP error is
 * ICMPv6 for an IPv6 attempt. */
enum answer_kind {
	ANSWER_NONE = 0,
	ANSWER_ICMP = 1,
	ANSWER_RST = 2,
};

/* One active connect attempt. Addresses are in network byte order; an IPv4
 * address (family 4) occupies the first four bytes of saddr/daddr.
 *
 * The fields from cgroup_id to pcomm are the same for every connect one
 * thread makes to one destination, and they are contiguous with no padding:
 * user space keys its cache of formatted rows by those bytes, so a repeated
 * connect costs it a lookup instead of a row's formatting. */
struct event {
	__u64 ts_ns;
	/* With --outcome: from the connect() call's start (where its calls
	 * are followed; else CLOSE->SYN_SENT) to leaving SYN_SENT. */
	__u64 latency_ns;
	__u16 lport;
	/* With --outcome: the TCP state the attempt ended in (ESTABLISHED or
	 * CLOSE), SYN_SENT while it is still under way, OUTCOME_NO_SYN when it
	 * never got there, 0 when it could not be followed; and the error that
	 * ended it (sk_err as it left SYN_SENT, or connect()'s errno). */
	__u16 outcome;
	__u16 error;
	/* With --outcome, as the attempt left SYN_SENT: the SYNs retransmitted
	 * (tcp_sock.total_retrans; a retransmission dropped on this host is not
	 * counted), the attempt's packets dropped on this host and the last
	 * one's drop reason (enum skb_drop_reason of the running kernel, 0
	 * where the kernel gives none). */
	__u16 syn_retries;
	__u16 drops;
	__u32 drop_reason;
	/* With --outcome, for an attempt that ended with an error: where the
	 * answer came from (the router of an ICMP error, the sender of a RST),
	 * in the attempt's family; see answer_kind below. */
	__u8 answer_from[16];
	__u64 cgroup_id;
	__u64 mntns_id;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 netns; /* inode of the socket's network namespace */
	/* Filled with want_lineage: the parent (real_parent) and its name, and
	 * the process and thread ids as the task's own PID namespace numbers
	 * them (what `ps` shows inside a container). */
	__u32 ppid;
	__u32 ns_pid;
	__u32 ns_tid;
	__u16 dport;
	__u16 family;
	char comm[TASK_COMM_LEN];
	char pcomm[TASK_COMM_LEN];
	/* enum answer_kind; for ANSWER_ICMP the message's type and code; the
	 * TTL (hop limit) the answer arrived with. */
	__u8 answer_kind;
	__u8 answer_type;
	__u8 answer_code;
	__u8 answer_ttl;
	/* Filled with want_exe: the executable (the task's mm->exe_file) as
	 * the key of its path, which arrives as a struct exe_record (see
	 * exe_path.bpf.h); exe_ino 0 when the task has none (a kernel thread). */
	__u32 exe_dev; /* the kernel's dev_t of its file system */
	__u64 exe_ino;
};

/* Path components a struct exe_record holds at most, and the bytes they
 * may start in: each is written whole (NAME_MAX + 1 bytes at most) into
 * names[], so names[] has room for one past the bound. */
#define EXE_DEPTH_MAX 24
#define EXE_NAMES_MAX 512
#define EXE_NAME_SLOT 256

/* Key of the exe_seen map: the executable as struct event gives it. */
struct exe_key {
	__u64 ino;
	__u32 dev;
};

/* The path of an executable, sent on the events ring the first time a
 * traced connect runs it (per key in the exe_seen LRU map); later connects
 * carry only the key. names[] holds `components` NUL-terminated names, the
 * file's own first, up to the root the walk stopped at; `cut` is set when
 * the walk stopped at a bound instead (more components or bytes than the
 * bounds above) and the names are the path's last ones; names_len is the
 * bytes of names[] they take. */
struct exe_record {
	__u64 ino;
	__u32 dev;
	__u32 deleted;
	__u32 components;
	__u32 cut;
	__u32 names_len;
	char names[EXE_NAMES_MAX + EXE_NAME_SLOT];
};
/* Key of the in-kernel connection counters (-c, --metrics). Only the fields
 * user space asks for before load are filled; the others stay 0, so they
 * split no counts. family is set whenever an address is. No padding: the
 * key is hashed by its bytes. */
struct count_key {
	__u64 cgroup_id;
	__u64 exe_ino; /* the executable, as struct event gives it */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 uid;
	__u32 exe_dev;
	__u16 dport;
	__u16 family;
	__u16 outcome; /* as in struct event; 0 without --outcome */
	__u16 error;
	char comm[TASK_COMM_LEN];
};

/* A UDP payload received from source port 53, for -d. */
struct dns_event {
	__u64 ts_ns;
	__u16 len;      /* bytes captured in payload */
	__u16 orig_len; /* UDP payload length on the wire */
	__u8 payload[DNS_PAYLOAD_MAX];
};

#endif
