/* SPDX-License-Identifier: GPL-2.0 */
/*
 * -c and --metrics: connects counted in the kernel by key (count_key), the
 * fields of the key chosen before load; nothing crosses the ring.
 */
#ifndef COUNTING_BPF_H
#define COUNTING_BPF_H

const volatile bool count_mode = false;
/* Which fields of count_key are filled. */
const volatile bool count_saddr = false;
const volatile bool count_daddr = false;
const volatile bool count_dport = false;
const volatile bool count_uid = false;
const volatile bool count_comm = false;
const volatile bool count_cgroup = false;
const volatile bool count_exe = false;

/* Read by user space through the mmapped .bss. */
__u64 count_failures = 0;

/* Two count tables, one live at a time: to read and reset the counts, user
 * space points `counts` at the other table, which returns only once every
 * program that could still be adding to the old one has finished. The old
 * table is then read and emptied with nothing writing to it, so no connect
 * is lost or counted twice at an interval boundary. Capacity is set by user
 * space before load. */
struct count_table {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct count_key);
	__type(value, __u64);
} counts_0 SEC(".maps"), counts_1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct count_table);
} counts SEC(".maps") = {
	.values = { &counts_0 },
};

/* The key is built here, not on the stack: the programs that count hold
 * an event or a parked attempt on theirs, and with the key beside them
 * handle_set_state (-L, --outcome) passed the 512 bytes the verifier
 * allows. One slot per nesting level on a CPU: a program counting in
 * softirq may interrupt another counting in a task on the same CPU (Linux
 * 5.10 does not even keep one program from nesting in itself), and each
 * needs its own key. Deeper than that is counted as a failure. */
#define COUNT_NESTING_MAX 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNT_NESTING_MAX);
	__type(key, __u32);
	__type(value, struct count_key);
} count_scratch SEC(".maps");

/* This CPU's nesting level of count_connect(). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} count_depth SEC(".maps");

static __always_inline void count_key_of(const struct event *e, struct count_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (count_saddr)
		__builtin_memcpy(key->saddr, e->saddr, sizeof(key->saddr));
	if (count_daddr)
		__builtin_memcpy(key->daddr, e->daddr, sizeof(key->daddr));
	if (count_saddr || count_daddr)
		key->family = e->family;
	if (count_dport)
		key->dport = e->dport;
	if (count_uid)
		key->uid = e->uid;
	if (count_cgroup)
		key->cgroup_id = e->cgroup_id;
	if (count_comm)
		__builtin_memcpy(key->comm, e->comm, sizeof(key->comm));
	if (count_exe) {
		key->exe_ino = e->exe_ino;
		key->exe_dev = e->exe_dev;
	}
	/* Both 0 without --outcome. */
	key->outcome = e->outcome;
	key->error = e->error;
}

static __always_inline bool count_key_in(void *table, const struct count_key *key)
{
	__u64 one = 1, *value = bpf_map_lookup_elem(table, key);

	if (value) {
		__sync_fetch_and_add(value, 1);
		return true;
	}
	/* Another CPU may have inserted the key meanwhile: BPF_NOEXIST then
	 * fails with EEXIST and the count goes to the existing entry. */
	if (!bpf_map_update_elem(table, key, &one, BPF_NOEXIST))
		return true;
	value = bpf_map_lookup_elem(table, key);
	if (!value)
		return false;
	__sync_fetch_and_add(value, 1);
	return true;
}

static __always_inline void count_connect(const struct event *e)
{
	__u32 zero = 0, level;
	__u32 *depth = bpf_map_lookup_elem(&count_depth, &zero);
	void *table = bpf_map_lookup_elem(&counts, &zero);
	struct count_key *key;

	/* No table cannot happen (user space only ever swaps the slot), but a
	 * connect that is not counted must still show in the losses. */
	if (!depth || !table) {
		__sync_fetch_and_add(&count_failures, 1);
		return;
	}
	/* Not atomic, and need not be: a run that interrupts this one has
	 * put the level back by the time this one goes on. */
	level = (*depth)++;
	key = bpf_map_lookup_elem(&count_scratch, &level);
	if (key)
		count_key_of(e, key);
	if (!key || !count_key_in(table, key))
		__sync_fetch_and_add(&count_failures, 1);
	(*depth)--;
}

#endif
