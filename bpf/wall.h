// Off-CPU time of the target threads (`-e wall`, `-e offcpu`; pyprof/sampling/wall.py), compiled into
// sampler.c with -DEVENT_WALL_PROGRAM.
//
// Two raw tracepoints (4.17+, no BTF-typed arguments needed; kprobes are not used: some kernels compile
// them out), and `offcpu_starts`, keyed by the task_struct pointer (the tracepoint's prev and next, and
// bpf_get_current_task(), so no task_struct offsets are needed to recognise a thread coming back):
// - sched_switch runs on prev, the thread leaving the CPU.
//   * A target thread that blocks (prev_state not TASK_RUNNING) is remembered: when, and its user
//     ip/sp (the registers saved on kernel entry). Its stack is not copied now: sys_exit does it.
//   * A target thread that is preempted (still runnable) has its stack copied now (a record flagged
//     PENDING): it resumes exactly there. When it is switched back in (it is `next` of a later
//     sched_switch) a small COMPLETION record says how long it waited for a CPU (Python pairs the two by
//     tid: a thread has one pending record at most).
// - sys_exit, on the thread itself when its syscall returns: the interval since it blocked is its time
//   off CPU (with the run-queue wait after its wake-up). The stack is taken here, not at the switch: the
//   thread has not run a user instruction since it blocked (same saved ip and sp), so its user registers,
//   stack, JavaThread anchor and states are the ones it had when it left, and only the intervals kept by
//   the sampling pay for a stack copy. A block that does not end in a syscall return at the same ip/sp
//   (a page fault that slept) is counted as UNMATCHED, not measured.
//
// Sampling: an interval of at least WALL_PERIOD_NS is sent with its exact length; a shorter one of
// length d is sent with probability d / WALL_PERIOD_NS and weight WALL_PERIOD_NS, else skipped (a
// preempted interval's completion then has weight 0: Python drops the pending record). The sum of the
// weights estimates all off-CPU time without bias, and a thread costs at most about one record per
// period however often it blocks (a server's 100k switches per second are mostly skipped here, in the
// kernel, before any stack is copied).
//
// Record: event EVENT_WALL, weight = the estimate (ns), detail = the measured interval (ns),
// state = JavaThread::_thread_state | OSThread::_state << 16 (0 where unknown or preempted).
// Counters: 4 SENT (blocked intervals sent), 5 SKIPPED (short intervals left out by the sampling, both
// kinds), 6 UNMATCHED, 7 PREEMPTED (preemptions seen).

#define C_WALL_SENT 4
#define C_WALL_SKIPPED 5
#define C_WALL_UNMATCHED 6
#define C_WALL_PREEMPTED 7
#define FLAG_WALL_PENDING 4       // a preempted thread's stack; its weight comes with the completion
#define FLAG_WALL_COMPLETION 8    // the preempted interval of thread `tid` is over: weight, detail
#define COMPLETION_BYTES 128      // header only (struct sample up to kstack): no stack in a completion

#ifndef WALL_PERIOD_NS
#define WALL_PERIOD_NS 10000000
#endif

struct offcpu_start {
    u64 time_ns;
    u64 ip;
    u64 sp;
    u64 pid_tgid;
    u32 preempted;
};
// LRU: a thread that exits while blocked never comes back; its entry ages out
BPF_TABLE("lru_hash", u64, struct offcpu_start, offcpu_starts, 65536);

static __always_inline struct user_regs *saved_user_regs(void) {
    return (struct user_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

static __always_inline void read_user_frame(struct user_regs *saved, struct user_frame *user) {
    bpf_probe_read_kernel(&user->ip, sizeof(user->ip), &saved->ip);
    bpf_probe_read_kernel(&user->sp, sizeof(user->sp), &saved->sp);
    bpf_probe_read_kernel(&user->bp, sizeof(user->bp), &saved->bp);
    bpf_probe_read_kernel(&user->r13, sizeof(user->r13), &saved->r13);
}

// The estimate of an interval of `away` ns (0: skipped by the sampling).
static __always_inline u64 sampled_weight(u64 away) {
    if (away >= WALL_PERIOD_NS)
        return away;
    if ((u64)(bpf_get_prandom_u32() % WALL_PERIOD_NS) < away)
        return WALL_PERIOD_NS;
    count(C_WALL_SKIPPED);
    return 0;
}

// The thread `next` is back on a CPU: end its preempted interval (its blocked ones end at sys_exit).
static __always_inline void wall_switch_in(u64 next) {
    struct offcpu_start *open = offcpu_starts.lookup(&next);
    if (!open || !open->preempted)
        return;
    struct offcpu_start start = *open;
    offcpu_starts.delete(&next);
    u64 now = bpf_ktime_get_ns();
    struct sample *s = samples.ringbuf_reserve(COMPLETION_BYTES);
    if (!s) {
        count(C_LOST);
        count(C_LOST_BY_EVENT + EVENT_WALL);
        return;
    }
    s->time_ns = now;
    s->tid = (u32)start.pid_tgid;
    s->pid = start.pid_tgid >> 32;
    s->cpu = bpf_get_smp_processor_id();
    s->flags = FLAG_WALL_COMPLETION;
    s->stack_len = 0;
    s->kstack_len = 0;
    s->event = EVENT_WALL;
    s->state = 0;
    s->detail = now - start.time_ns;
    s->weight = sampled_weight(s->detail);
    samples.ringbuf_submit(s, BPF_RB_NO_WAKEUP);
}

// A target thread preempted: its stack now, its weight when it is back (wall_switch_in).
static __always_inline void wall_preempted(void *ctx, u64 task, u64 pid_tgid) {
    count(C_WALL_PREEMPTED);
    if (offcpu_starts.lookup(&task))
        return;   // blocked in this syscall before: that interval goes on until sys_exit
    struct user_regs *saved = saved_user_regs();
    if (!saved)
        return;
    struct user_frame user = {};
    read_user_frame(saved, &user);
    struct sample *s = begin_sample(pid_tgid, EVENT_WALL);
    if (!s)
        return;
    capture(ctx, s, &user);
    s->flags |= FLAG_WALL_PENDING;
    struct offcpu_start start = {};
    start.time_ns = bpf_ktime_get_ns();
    start.ip = user.ip;
    start.sp = user.sp;
    start.pid_tgid = pid_tgid;
    start.preempted = 1;
    offcpu_starts.update(&task, &start);
    samples.ringbuf_submit(s, BPF_RB_NO_WAKEUP);
}

// raw tracepoint sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next
// [, unsigned int prev_state since 5.18]): runs on prev.
int wall_on_switch(struct bpf_raw_tracepoint_args *ctx) {
    wall_switch_in(ctx->args[2]);
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    u64 task = ctx->args[1];
    // Still runnable (preempted in the kernel, or rescheduled on its way back to user mode, which is
    // a "voluntary" schedule() with preempt false): prev_state TASK_RUNNING (0), an argument since
    // 5.18; before, only kernel preemptions are told apart, and a reschedule on the way back to user
    // mode ends as UNMATCHED.
#ifdef WALL_PREV_STATE_ARG
    if (ctx->args[0] || (ctx->args[3] & 0xffff) == 0) {
#else
    if (ctx->args[0]) {
#endif
        wall_preempted(ctx, task, pid_tgid);
        return 0;
    }
    struct user_regs *saved = saved_user_regs();
    if (!saved)
        return 0;
    struct offcpu_start start = {};
    start.time_ns = bpf_ktime_get_ns();
    bpf_probe_read_kernel(&start.ip, sizeof(start.ip), &saved->ip);
    bpf_probe_read_kernel(&start.sp, sizeof(start.sp), &saved->sp);
    start.pid_tgid = pid_tgid;
    struct offcpu_start *open = offcpu_starts.lookup(&task);
    if (open) {
        if (open->ip == start.ip && open->sp == start.sp)
            return 0;   // blocked again in the same syscall: the interval runs from the first block
        count(C_WALL_UNMATCHED);
    }
    offcpu_starts.update(&task, &start);
    return 0;
}

// raw tracepoint sys_exit(struct pt_regs *regs, long ret): on the thread whose syscall returns.
int wall_on_sys_exit(struct bpf_raw_tracepoint_args *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    u64 task = bpf_get_current_task();
    struct offcpu_start *open = offcpu_starts.lookup(&task);
    if (!open || open->preempted)
        return 0;
    struct offcpu_start start = *open;
    offcpu_starts.delete(&task);
    u64 away = bpf_ktime_get_ns() - start.time_ns;
    struct user_regs *saved = saved_user_regs();
    if (!saved)
        return 0;
    struct user_frame user = {};
    read_user_frame(saved, &user);
    if (user.ip != start.ip || user.sp != start.sp) {
        count(C_WALL_UNMATCHED);
        return 0;
    }
    u64 weight = sampled_weight(away);
    if (!weight)
        return 0;
    struct sample *s = begin_sample(pid_tgid, EVENT_WALL);
    if (!s)
        return 0;
    capture(ctx, s, &user);
    s->weight = weight;
    s->detail = away;
    u32 tid = (u32)pid_tgid;
    struct anchor_addresses *a = java_threads.lookup(&tid);
    if (a) {
        u32 java_state = 0, os_state = 0;
        if (a->thread_state)
            bpf_probe_read_user(&java_state, sizeof(java_state), (void *)a->thread_state);
        if (a->os_state)
            bpf_probe_read_user(&os_state, sizeof(os_state), (void *)a->os_state);
        s->state = (java_state & 0xffff) | (os_state << 16);
    }
    count(C_WALL_SENT);
    samples.ringbuf_submit(s, BPF_RB_NO_WAKEUP);
    return 0;
}
