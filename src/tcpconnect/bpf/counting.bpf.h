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

static __always_inline void count_connect(const struct event *e)
{
	struct count_key key = {};
	__u64 one = 1, *value;
	__u32 live = 0;
	void *table = bpf_map_lookup_elem(&counts, &live);

	if (!table) {
		/* Cannot happen (user space only ever swaps the slot), but a
		 * connect that is not counted must still show in the losses. */
		__sync_fetch_and_add(&count_failures, 1);
		return;
	}
	if (count_saddr)
		__builtin_memcpy(key.saddr, e->saddr, sizeof(key.saddr));
	if (count_daddr)
		__builtin_memcpy(key.daddr, e->daddr, sizeof(key.daddr));
	if (count_saddr || count_daddr)
		key.family = e->family;
	if (count_dport)
		key.dport = e->dport;
	if (count_uid)
		key.uid = e->uid;
	if (count_cgroup)
		key.cgroup_id = e->cgroup_id;
	if (count_comm)
		__builtin_memcpy(key.comm, e->comm, sizeof(key.comm));
	/* Both 0 without --outcome. */
	key.outcome = e->outcome;
	key.error = e->error;
	value = bpf_map_lookup_elem(table, &key);
	if (value) {
		__sync_fetch_and_add(value, 1);
		return;
	}
	/* Another CPU may have inserted the key meanwhile: BPF_NOEXIST then
	 * fails with EEXIST and the count goes to the existing entry. */
	if (bpf_map_update_elem(table, &key, &one, BPF_NOEXIST)) {
		value = bpf_map_lookup_elem(table, &key);
		if (value)
			__sync_fetch_and_add(value, 1);
		else
			__sync_fetch_and_add(&count_failures, 1);
	}
}

#endif
