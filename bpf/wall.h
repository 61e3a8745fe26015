// Off-CPU time of the target threads (`-e wall`, `-e offcpu`; pyprof/sampling/wall.py), compiled into
// sampler.c with -DEVENT_WALL_PROGRAM.
//
// Two raw tracepoints (4.17+, no BTF needed; kprobes are not used: some kernels compile them out):
// - sched_switch, on the outgoing thread: a target thread that blocks (a voluntary switch) is
//   remembered in `offcpu_starts`: when, and its user ip/sp (the registers saved on kernel entry).
// - sys_exit, on the thread itself when its syscall returns: the interval since it blocked is its time
//   off CPU (including the run-queue wait after its wake-up). Its stack is taken here, not at the
//   switch: the thread has not run a user instruction since it blocked (same saved ip and sp), so its
//   user registers, stack, JavaThread anchor and states are the ones it had when it left, and only the
//   intervals kept below pay for a stack copy. A switch that does not end in a syscall return at the
//   same ip/sp (a page fault that slept, a thread that exited) is counted as UNMATCHED, not measured.
// Preempted threads (runnable, waiting for a CPU: TASK_RUNNING at the switch, known from the tracepoint's
// prev_state argument on 5.18+; before, only kernel preemptions are told apart and a reschedule on the
// way back to user mode ends as UNMATCHED) are counted, not measured.
//
// Sampling: an interval of at least WALL_PERIOD_NS is sent with its exact length; a shorter one of
// length d is sent with probability d / WALL_PERIOD_NS and weight WALL_PERIOD_NS, else skipped. The sum
// of weights estimates all off-CPU time without bias, and a thread costs at most about one record per
// period however often it switches (a server's 100k switches per second are mostly skipped here, in the
// kernel, before any stack is copied).
//
// Record: event EVENT_WALL, weight = the estimate (ns), detail = the measured interval (ns),
// state = JavaThread::_thread_state | OSThread::_state << 16 (0 where unknown).
// Counters: 4 SENT, 5 SKIPPED (short intervals left out by the sampling), 6 UNMATCHED, 7 PREEMPTED.

#define C_WALL_SENT 4
#define C_WALL_SKIPPED 5
#define C_WALL_UNMATCHED 6
#define C_WALL_PREEMPTED 7

#ifndef WALL_PERIOD_NS
#define WALL_PERIOD_NS 10000000
#endif

struct offcpu_start {
    u64 time_ns;
    u64 ip;
    u64 sp;
};
// LRU: a thread that exits while blocked never returns from its syscall; its entry ages out
BPF_TABLE("lru_hash", u32, struct offcpu_start, offcpu_starts, 65536);

static __always_inline struct user_regs *saved_user_regs(void) {
    return (struct user_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

// raw tracepoint sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...):
// it runs on prev, the thread leaving the CPU.
int wall_on_switch(struct bpf_raw_tracepoint_args *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    // Still runnable (preempted in the kernel, or rescheduled on its way back to user mode, which is
    // a "voluntary" schedule() with preempt false): prev_state TASK_RUNNING (0), an argument since 5.18.
#ifdef WALL_PREV_STATE_ARG
    if (ctx->args[0] || (ctx->args[3] & 0xffff) == 0) {
#else
    if (ctx->args[0]) {
#endif
        count(C_WALL_PREEMPTED);
        return 0;
    }
    struct user_regs *saved = saved_user_regs();
    if (!saved)
        return 0;
    struct offcpu_start start = {};
    start.time_ns = bpf_ktime_get_ns();
    bpf_probe_read_kernel(&start.ip, sizeof(start.ip), &saved->ip);
    bpf_probe_read_kernel(&start.sp, sizeof(start.sp), &saved->sp);
    u32 tid = (u32)pid_tgid;
    struct offcpu_start *open = offcpu_starts.lookup(&tid);
    if (open) {
        if (open->ip == start.ip && open->sp == start.sp)
            return 0;   // blocked again in the same syscall: the interval runs from the first block
        count(C_WALL_UNMATCHED);
    }
    offcpu_starts.update(&tid, &start);
    return 0;
}

// raw tracepoint sys_exit(struct pt_regs *regs, long ret): on the thread whose syscall returns.
int wall_on_sys_exit(struct bpf_raw_tracepoint_args *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    u32 tid = (u32)pid_tgid;
    struct offcpu_start *open = offcpu_starts.lookup(&tid);
    if (!open)
        return 0;
    struct offcpu_start start = *open;
    offcpu_starts.delete(&tid);
    u64 away = bpf_ktime_get_ns() - start.time_ns;
    struct user_regs *saved = saved_user_regs();
    if (!saved)
        return 0;
    struct user_frame user = {};
    bpf_probe_read_kernel(&user.ip, sizeof(user.ip), &saved->ip);
    bpf_probe_read_kernel(&user.sp, sizeof(user.sp), &saved->sp);
    bpf_probe_read_kernel(&user.bp, sizeof(user.bp), &saved->bp);
    bpf_probe_read_kernel(&user.r13, sizeof(user.r13), &saved->r13);
    if (user.ip != start.ip || user.sp != start.sp) {
        count(C_WALL_UNMATCHED);
        return 0;
    }
    u64 weight = away;
    if (away < WALL_PERIOD_NS) {
        if ((u64)(bpf_get_prandom_u32() % WALL_PERIOD_NS) >= away) {
            count(C_WALL_SKIPPED);
            return 0;
        }
        weight = WALL_PERIOD_NS;
    }
    struct sample *s = begin_sample(pid_tgid, EVENT_WALL);
    if (!s)
        return 0;
    capture(ctx, s, &user);
    s->weight = weight;
    s->detail = away;
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
