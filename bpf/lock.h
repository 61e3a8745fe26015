// `-e lock`: contended Java monitor entries and j.u.c parking, with the time waited (compiled into
// bpf/sampler.c with -DEVENT_LOCK_PROGRAM).
//
// pyprof/sampling/lock.py attaches pid-filtered uprobes and uretprobes on each JVM's own libjvm:
//   the contended part of a monitor entry (ObjectMonitor::enter on 11-21, which its fast CAS and the
//     recursion checks precede; ObjectMonitor::enter_with_contention_mark on 24+, after the spinning)
//   Parker::park(bool isAbsolute, jlong time): LockSupport.park, under every j.u.c lock and condition.
// The entry probe keeps the start time and the ObjectMonitor* per thread (hash `lock_waits`); the return
// probe measures the wait and, when it lasted at least LOCK_THRESHOLD_NS, sends a record taken at the
// return: the caller's registers then are those of the moment the wait ended (the uretprobe has
// restored the real return address), and only waits over the threshold pay for a stack copy.
// An entry that got the monitor at once (11-21: an inflated monitor nobody held) or a park that found
// its permit returns within microseconds and is dropped by the threshold.
//
// A record: weight = ns waited, state = LOCK_MONITOR or LOCK_PARK, detail = the Klass* of the monitor's
// object (monitors only, 0 when unreadable), read at the return, while the thread owns the monitor and
// its object cannot move: ObjectMonitor::_object (an oop on 11, a WeakHandle's oop* on 16+) and the
// object's klass word, as the per-JVM `lock_layouts` entry describes them (lock.py fills it from
// VMStructs). Which object a park waits for (Thread.parkBlocker) is not read.
// counters: 12 monitor entries seen, 13 parks seen, 14 records (waits over the threshold),
// 15 returns without a recorded entry (evicted from the LRU hash, or probes attached mid-call).

#ifndef LOCK_THRESHOLD_NS
#define LOCK_THRESHOLD_NS 10000
#endif
#define LOCK_MONITOR 1
#define LOCK_PARK 2
#define C_LOCK_MONITOR_ENTRIES 12
#define C_LOCK_PARKS 13
#define C_LOCK_RECORDS 14
#define C_LOCK_UNMATCHED 15

struct lock_wait {
    u64 start_ns;
    u64 monitor;     // ObjectMonitor* (0 for a park)
    u32 kind;
};
BPF_TABLE("lru_hash", u32, struct lock_wait, lock_waits, 65536);   // LRU: a thread that dies waiting leaves its entry

// How to find a monitor's class in one JVM (tgid -> layout; no entry: the class is not read).
struct lock_layout {
    u64 object_offset;     // ObjectMonitor::_object
    u64 object_is_handle;  // 1: _object holds an oop* (WeakHandle, 16+); 0: the oop itself
    u64 klass_offset;      // oopDesc's klass word
    u64 narrow_klass;      // 1: a 32-bit compressed class pointer
    u64 klass_base;        // CompressedKlassPointers base and shift
    u64 klass_shift;
    u64 mark_klass_shift;  // compact object headers: the narrow klass is mark word >> this (0: not so)
};
BPF_HASH(lock_layouts, u32, struct lock_layout, 4096);

static __always_inline int lock_wait_begins(u32 kind, u64 monitor) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    count(kind == LOCK_MONITOR ? C_LOCK_MONITOR_ENTRIES : C_LOCK_PARKS);
    u32 tid = (u32)pid_tgid;
    struct lock_wait wait = {bpf_ktime_get_ns(), monitor, kind};
    lock_waits.update(&tid, &wait);
    return 0;
}

static __always_inline u64 monitor_klass(u32 tgid, u64 monitor) {
    struct lock_layout *layout = lock_layouts.lookup(&tgid);
    if (!layout || !monitor)
        return 0;
    u64 obj = 0;
    if (bpf_probe_read_user(&obj, sizeof(obj), (void *)(monitor + layout->object_offset)) != 0 || !obj)
        return 0;
    if (layout->object_is_handle &&
        (bpf_probe_read_user(&obj, sizeof(obj), (void *)obj) != 0 || !obj))
        return 0;
    if (layout->mark_klass_shift) {
        // compact headers (klass_offset is the mark word's): the upper bits hold the narrow klass, and
        // keep it while the object is locked (the monitor is in a table, not in the header)
        u64 mark = 0;
        if (bpf_probe_read_user(&mark, sizeof(mark), (void *)(obj + layout->klass_offset)) != 0)
            return 0;
        u64 narrow = mark >> (layout->mark_klass_shift & 63);
        if (!narrow)
            return 0;
        return layout->klass_base + (narrow << (layout->klass_shift & 63));
    }
    if (layout->narrow_klass) {
        u32 narrow = 0;
        if (bpf_probe_read_user(&narrow, sizeof(narrow), (void *)(obj + layout->klass_offset)) != 0 || !narrow)
            return 0;
        return layout->klass_base + ((u64)narrow << (layout->klass_shift & 63));
    }
    u64 klass = 0;
    bpf_probe_read_user(&klass, sizeof(klass), (void *)(obj + layout->klass_offset));
    return klass;
}

static __always_inline int lock_wait_ends(struct pt_regs *ctx, u32 kind) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    u32 tid = (u32)pid_tgid;
    struct lock_wait *wait = lock_waits.lookup(&tid);
    if (!wait || wait->kind != kind) {
        count(C_LOCK_UNMATCHED);
        return 0;
    }
    u64 waited = bpf_ktime_get_ns() - wait->start_ns;
    u64 monitor = wait->monitor;
    lock_waits.delete(&tid);
    if (waited < LOCK_THRESHOLD_NS)
        return 0;
    struct sample *s = begin_sample(pid_tgid, EVENT_LOCK);
    if (!s)
        return 0;
    count(C_LOCK_RECORDS);
    s->weight = waited;
    s->state = kind;
    s->detail = kind == LOCK_MONITOR ? monitor_klass(tgid, monitor) : 0;
    struct user_frame user = {ctx->ip, ctx->sp, ctx->bp, ctx->r13};
    capture(ctx, s, &user);
    samples.ringbuf_submit(s, BPF_RB_NO_WAKEUP);
    return 0;
}

// ObjectMonitor::enter(JavaThread*) / enter_with_contention_mark(JavaThread*, ...): this = the monitor
int on_monitor_enter(struct pt_regs *ctx) {
    return lock_wait_begins(LOCK_MONITOR, ctx->di);
}

int on_monitor_enter_return(struct pt_regs *ctx) {
    return lock_wait_ends(ctx, LOCK_MONITOR);
}

// Parker::park(bool isAbsolute, jlong time)
int on_park(struct pt_regs *ctx) {
    return lock_wait_begins(LOCK_PARK, 0);
}

int on_park_return(struct pt_regs *ctx) {
    return lock_wait_ends(ctx, LOCK_PARK);
}
