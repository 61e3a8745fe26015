// `-e alloc`: sampled Java allocations (compiled into bpf/sampler.c with -DEVENT_ALLOC_PROGRAM).
//
// HotSpot reports every TLAB refill and every allocation outside a TLAB to
// AllocTracer::send_allocation_in_new_tlab(Klass*, HeapWord*, size_t tlab_size, size_t alloc_size, thread)
// and AllocTracer::send_allocation_outside_tlab(Klass*, HeapWord*, size_t alloc_size, thread), whether JFR
// runs or not (memAllocator.cpp); pyprof/sampling/alloc.py attaches pid-filtered uprobes to both on each
// JVM's own libjvm. An allocation inside the current TLAB reaches neither: a refill stands for the
// TLAB's bytes (tlab_size), an object outside a TLAB for its own (the accounting async-profiler and
// JFR's ObjectAllocationSample use).
//
// Sampling (Go's runtime.MemProfileRate scheme): each thread counts down the bytes to its next sample
// (LRU hash `alloc_remaining`, tid -> bytes); the distance is drawn from an exponential distribution
// of mean ALLOC_INTERVAL (table `alloc_intervals` of its quantiles, filled by Python: BPF has no
// floating point). An event of S bytes is then sampled with probability 1 - exp(-S / interval)
// whatever came before it, so Python scales each record by the inverse of that probability and totals
// estimate every allocated byte and object. A fixed threshold would alias with a periodic workload.
//
// A record: weight = S (the bytes the event stands for: the TLAB's or the object's), detail = the
// Klass* of the allocated object, state = the object's size in bytes (capped at 2^32 - 1).
// counters: 8 uprobe hits, 9 records taken (a full ring buffer is counted in C_LOST, as for cpu).

#ifndef ALLOC_INTERVAL
#define ALLOC_INTERVAL 524288
#endif
#define ALLOC_QUANTILES 1024
#define C_ALLOC_EVENTS 8
#define C_ALLOC_SAMPLES 9

BPF_TABLE("lru_hash", u32, u64, alloc_remaining, 65536);
BPF_ARRAY(alloc_intervals, u64, ALLOC_QUANTILES);

static __always_inline u64 next_alloc_distance(void) {
    u32 i = bpf_get_prandom_u32() & (ALLOC_QUANTILES - 1);
    u64 *distance = alloc_intervals.lookup(&i);
    return distance ? *distance : ALLOC_INTERVAL;
}

static __always_inline int on_allocation(struct pt_regs *ctx, u64 klass, u64 event_bytes, u64 object_bytes) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    count(C_ALLOC_EVENTS);
    u32 tid = (u32)pid_tgid;
    u64 *remaining = alloc_remaining.lookup(&tid);
    if (!remaining) {   // a thread's first event: where its first sample falls is drawn too
        u64 first = next_alloc_distance();
        alloc_remaining.update(&tid, &first);
        remaining = alloc_remaining.lookup(&tid);
        if (!remaining)
            return 0;
    }
    if (event_bytes < *remaining) {
        *remaining -= event_bytes;
        return 0;
    }
    *remaining = next_alloc_distance();   // memoryless: the overshoot needs no carrying over
    struct sample *s = begin_sample(pid_tgid, EVENT_ALLOC);
    if (!s)
        return 0;
    count(C_ALLOC_SAMPLES);
    s->weight = event_bytes;
    s->detail = klass;
    s->state = object_bytes > 0xffffffffULL ? 0xffffffffU : (u32)object_bytes;
    // a uprobe fires in user mode at the function's entry: its registers are the user's
    struct user_frame user = {ctx->ip, ctx->sp, ctx->bp, ctx->r13};
    capture(ctx, s, &user);
    samples.ringbuf_submit(s, BPF_RB_NO_WAKEUP);
    return 0;
}

// send_allocation_in_new_tlab(Klass* klass, HeapWord* obj, size_t tlab_size, size_t alloc_size, ...)
int on_alloc_in_new_tlab(struct pt_regs *ctx) {
    return on_allocation(ctx, ctx->di, ctx->dx, ctx->cx);
}

// send_allocation_outside_tlab(Klass* klass, HeapWord* obj, size_t alloc_size, ...)
int on_alloc_outside_tlab(struct pt_regs *ctx) {
    return on_allocation(ctx, ctx->di, ctx->dx, ctx->dx);
}
