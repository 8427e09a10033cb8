/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The executable of the connecting task (-j's "exe", -X): its path is made
 * here, in the kernel, because by the time user space reads a row a
 * short-lived process and its /proc entry are gone. Walking the path costs
 * a probe read or two per component, so it is done once per executable:
 * every connect carries only the file's key (device, inode), and the path
 * goes out as its own record the first time the key is seen (exe_seen,
 * whose value is whether the path sent said the file was unlinked). User
 * space keeps key -> path; a key it does not know (the record lost, or its
 * cache emptied) it removes from exe_seen, so the next connect of that
 * executable sends the path again.
 *
 * The walk follows dentry parents and crosses mounts (struct mount's
 * parent and mountpoint) like the kernel's d_path, and stops at the task's
 * root: a process in a container with its own root gets the path as it
 * sees it, as /proc/PID/exe shows it to that process.
 */
#ifndef EXE_PATH_BPF_H
#define EXE_PATH_BPF_H

const volatile bool want_exe = false;

/* Read by user space through the mmapped .bss: paths whose record found
 * no room in the ring (their key is forgotten, so the next connect of the
 * executable tries again). */
__u64 lost_exe_records = 0;

/* More executables than a host runs at once; an evicted one costs its
 * path sent again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exe_key);
	__type(value, __u8);
} exe_seen SEC(".maps");

/* struct mount embeds the struct vfsmount that files point to. */
static __always_inline const struct mount *real_mount(const struct vfsmount *vfsmnt)
{
	return (const void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
}

static __always_inline const struct vfsmount *vfs_mount(const struct mount *mnt)
{
	return (const void *)mnt + bpf_core_field_offset(struct mount, mnt);
}

/* Fills r->names from the file's dentry up to the task's root.
 *
 * The bytes written so far are kept in r->names_len, ring memory, and not
 * in a local: the verifier tracks a register's or stack slot's range but
 * reads ring memory back as any value, so each pass of the loop starts from
 * the same state whatever the passes before wrote (the mask bounds it
 * again). Kept in a local, every pass's offset was a range of its own and
 * no two states matched: 94,000 instructions verified, 40 ms, in each of
 * the two programs that call send_exe_path, against 5,500 (6 ms) so. */
static __always_inline void walk_exe_path(const struct task_struct *task,
					  const struct file *file, struct exe_record *r)
{
	const struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	const struct vfsmount *vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	const struct mount *mnt = real_mount(vfsmnt);
	const struct dentry *root = BPF_CORE_READ(task, fs, root.dentry);
	const struct vfsmount *root_mnt = BPF_CORE_READ(task, fs, root.mnt);
	volatile __u32 *names_len = &r->names_len;
	bool whole = false;

	*names_len = 0;
	r->components = 0;
	for (int i = 0; i < EXE_DEPTH_MAX; i++) {
		const struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		const struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
		__u32 offset = *names_len;
		int n;

		if (dentry == root && vfsmnt == root_mnt) {
			whole = true;
			break;
		}
		if (dentry == mnt_root || dentry == parent) {
			const struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

			/* The top of the mount tree, or of a detached mount: the
			 * task's root is not above the file (a chroot it escaped). */
			if (dentry != mnt_root || up == mnt) {
				whole = true;
				break;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			vfsmnt = vfs_mount(up);
			continue;
		}
		if (offset >= EXE_NAMES_MAX)
			break;
		/* The mask restates the bound for the verifier. */
		n = bpf_probe_read_kernel_str(r->names + (offset & (EXE_NAMES_MAX - 1)),
					      EXE_NAME_SLOT, BPF_CORE_READ(dentry, d_name.name));
		if (n <= 0)
			break;
		*names_len = offset + n;
		r->components++;
		dentry = parent;
	}
	r->cut = !whole;
}

/* A global function, not inlined: the verifier checks it once, on its own
 * (on Linux 5.10 the walk inlined into handle_set_state took it past the
 * verifier's million instructions). Scalar arguments only: 5.10 passes a
 * global function nothing else but the context. */
__noinline int send_exe_path(__u64 ino, __u32 dev, __u32 deleted)
{
	const struct task_struct *task = (const void *)bpf_get_current_task();
	const struct file *file = BPF_CORE_READ(task, mm, exe_file);
	struct exe_key key = { .ino = ino, .dev = dev };
	struct exe_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);

	if (!r) {
		__sync_fetch_and_add(&lost_exe_records, 1);
		bpf_map_delete_elem(&exe_seen, &key);
		return 0;
	}
	r->ino = ino;
	r->dev = dev;
	r->deleted = deleted;
	walk_exe_path(task, file, r);
	bpf_ringbuf_submit(r, ringbuf_flags(&events));
	return 0;
}

/* The executable's key into *e: a few probe reads, in every traced
 * connect's program. Returns the executable's dentry, NULL for a task
 * without one (a kernel thread). */
static __always_inline const struct dentry *read_exe_key(struct event *e)
{
	const struct task_struct *task = (const void *)bpf_get_current_task();
	const struct dentry *dentry = BPF_CORE_READ(task, mm, exe_file, f_path.dentry);

	if (!dentry)
		return NULL;
	e->exe_ino = BPF_CORE_READ(dentry, d_inode, i_ino);
	e->exe_dev = BPF_CORE_READ(dentry, d_inode, i_sb, s_dev);
	return dentry;
}

/* d_unlinked(): out of the dentry hash, and not a root. */
static __always_inline __u8 exe_unlinked(const struct dentry *dentry)
{
	return !BPF_CORE_READ(dentry, d_hash.pprev) && BPF_CORE_READ(dentry, d_parent) != dentry;
}

/* Whether the path of e's executable went out already, unlinked or not as
 * it is now: what nearly every connect finds, in one lookup. */
static __always_inline bool exe_path_sent(const struct event *e, __u8 deleted)
{
	struct exe_key key = { .ino = e->exe_ino, .dev = e->exe_dev };
	__u8 *sent = bpf_map_lookup_elem(&exe_seen, &key);

	return sent && *sent == deleted;
}

/* The path of e's executable into the ring the first time its key is seen,
 * and again if the file was unlinked since (the path then says so). */
static __always_inline void send_new_exe_path(const struct event *e, __u8 deleted)
{
	struct exe_key key = { .ino = e->exe_ino, .dev = e->exe_dev };
	__u8 *sent = bpf_map_lookup_elem(&exe_seen, &key);

	if (sent) {
		/* Not atomic: two CPUs may both send the unlinked path, which
		 * costs a record and changes nothing. */
		if (*sent == deleted)
			return;
		*sent = deleted;
	} else if (bpf_map_update_elem(&exe_seen, &key, &deleted, BPF_NOEXIST)) {
		/* Another CPU added it first and sends it. */
		return;
	}
	send_exe_path(key.ino, key.dev, deleted);
}

#endif
