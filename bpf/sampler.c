// On-CPU samples of the target processes (pyprof/sampling/sampler.py loads this).
//
// Attached to a cpu-clock perf event on every CPU (sample_freq = --rate). A sample of a thread of a
// target process (hash `targets`: tgid -> 1, set by Python: a map rather than a compile-time constant so
// that `pyprof record` can compile and attach before it starts the JVM, and one program serves every JVM
// of a host) sends one record through the ring buffer `samples`:
//   u64 time_ns        bpf_ktime_get_ns() (CLOCK_MONOTONIC, the clock of the nmethod events)
//   u32 tid, u32 cpu
//   u64 ip, sp, bp, r13 user registers (r13 holds the interpreter's bcp on x86_64)
//   u32 stack_len      bytes of user stack copied from sp (0 when nothing could be read)
//   u32 kstack_len     bytes of kernel stack (u64 return addresses, innermost first)
//   u32 flags          FLAG_* below
//   u32 pid            the target process (tgid) the sample belongs to
//   u64 anchor_sp, anchor_pc, anchor_fp   the JavaThread's last Java frame at sample time (0 if none)
//   u64 vthread, vthread_tid   the virtual thread mounted at sample time (oop, java.lang.Thread.tid;
//                      0 when none is mounted or before JDK 21)
//   u32 event          EVENT_* below: which program took the record (pyprof/sampling/events.py)
//   u32 state          the event's thread state (wall: the JavaThread's state at the switch; else 0)
//   u64 weight         the event's value (wall/lock: nanoseconds; alloc: bytes; cpu: 0 = one period)
//   u64 detail         the event's object (alloc: the Klass*; lock: the monitor's object; else 0)
//   char comm[16]      the thread's name at the time of the record (a thread that exits before Python
//                      reads its name keeps this one; HotSpot sets it from the Java name, cut to 15)
//   u64 kstack[KSTACK_DEPTH]
//   u8  stack[STACK_BYTES]
// The record has a fixed size (STACK_BYTES is a compile-time constant, set from --stack-bytes) so it
// works on kernels without dynamic ring-buffer reservations; Python reads only stack_len bytes.
//
// Hash `java_threads` (filled by Python from VMStructs): tid -> addresses of its JavaThread's
//   _anchor._last_Java_sp/_pc/_fp, and its stack base (the highest stack address). A thread in native or
//   VM code has its last Java frame there; reading it here, not later in Python, gets the value of the
//   moment of the sample. The stack base bounds the copy: glibc puts the thread's TCB right above the
//   stack, so a fixed-size copy from sp would run off the end of the mapping and fail.
//   Then (JDK 21+, else 0) the OopStorage slots of JavaThread::_vthread and _threadObj and the offset of
//   java.lang.Thread.tid: a carrier remounts another virtual thread within microseconds, so which one is
//   mounted is read here too. _vthread holds the carrier's own Thread when none is mounted.
//   Then the addresses of JavaThread::_thread_state and OSThread::_state (the wall program reads the
//   thread's state at the switch there; 0 when VMStructs does not publish them).
// Array `counters` (per CPU), index:
//   0 LOST        a sample of the target did not fit in the ring buffer
//   1 TRUNCATED   the stack is deeper than the copy (only known for Java threads, whose base is known)
//   2 NO_USER     no user registers (a kernel thread, or the task is exiting)
//   3 SEEN        samples of the target (sent or lost)
//   16..19        LOST of each event (LOST_BY_EVENT + EVENT_*): the daemon reports lost records per event
//
// Why the user registers come from bpf_task_pt_regs(): when the timer fires while the thread is in
// the kernel (a syscall, a page fault), ctx->regs are kernel registers; the user ones are saved at
// the top of the task's kernel stack, in the same layout.

#include <uapi/linux/ptrace.h>

// x86_64 registers in the UAPI layout of bpf_user_pt_regs_t (struct pt_regs of
// arch/x86/include/uapi/asm/ptrace.h, 21 u64 = 168 bytes; the kernel's task pt_regs has the same
// offsets). Declared here rather than taken from the headers: bcc compiles with __KERNEL__, and the
// kernel's own struct pt_regs made `cs` a 16-bit field in 6.9 (FRED). The verifier allows only
// 8-byte loads from a perf-event context and refused the 2-byte load of cs on Debian's 6.12
// ("invalid bpf_context access off=136 size=2"; pyprof/kernel/requirements.py lists such differences).
struct user_regs {
    u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

// The context of a perf-event program (UAPI <linux/bpf_perf_event.h>). Declared here because including
// that header costs ~0.9 s of clang time per start.
struct perf_sample_ctx {
    struct user_regs regs;
    u64 sample_period;
    u64 addr;
};

#ifndef STACK_BYTES
#define STACK_BYTES 32768
#endif
#ifndef KSTACK_DEPTH
#define KSTACK_DEPTH 64
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif

#define FLAG_KERNEL_MODE 1     // the timer interrupted kernel code
#define FLAG_TRUNCATED 2

#define C_LOST 0
#define C_TRUNCATED 1
#define C_NO_USER 2
#define C_SEEN 3
// counters 4..15 belong to the other events' programs (wall 4-7, alloc 8-11, lock 12-15)
#define C_LOST_BY_EVENT 16
#define N_COUNTERS 20

#define EVENT_CPU 0
#define EVENT_WALL 1
#define EVENT_ALLOC 2
#define EVENT_LOCK 3

struct sample {
    u64 time_ns;
    u32 tid;
    u32 cpu;
    u64 ip;
    u64 sp;
    u64 bp;
    u64 r13;
    u32 stack_len;
    u32 kstack_len;
    u32 flags;
    u32 pid;
    u64 anchor_sp;
    u64 anchor_pc;
    u64 anchor_fp;
    u64 vthread;
    u64 vthread_tid;
    u32 event;
    u32 state;
    u64 weight;
    u64 detail;
    char comm[16];
    u64 kstack[KSTACK_DEPTH];
    u8 stack[STACK_BYTES];
};

BPF_RINGBUF_OUTPUT(samples, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, u64, N_COUNTERS);
BPF_HASH(targets, u32, u8, 4096);
struct anchor_addresses {
    u64 sp;
    u64 pc;
    u64 fp;
    u64 stack_base;
    u64 vthread_slot;
    u64 thread_obj_slot;
    u64 tid_offset;
    u64 thread_state;   // &JavaThread::_thread_state (u32): read by the wall program (wall.h), else 0
    u64 os_state;       // &OSThread::_state (u32: sleeping, object wait, monitor wait...), else 0
};
BPF_HASH(java_threads, u32, struct anchor_addresses, 65536);

static __always_inline void count(int index) {
    u64 *n = counters.lookup(&index);
    if (n)
        *n += 1;
}

// Copy the stack from sp: up to the thread's stack base when it is known, else as much of the window
// as is readable (halving it: the end of the mapping may be closer than STACK_BYTES).
static __always_inline u32 copy_stack(struct sample *s, u64 sp, u64 base) {
    if (base > sp) {
        u64 want = base - sp;
        if (want > STACK_BYTES)
            want = STACK_BYTES;
        if (want > 0 && bpf_probe_read_user(s->stack, want, (void *)sp) == 0)
            return (u32)want;
    }
    if (bpf_probe_read_user(s->stack, STACK_BYTES, (void *)sp) == 0)
        return STACK_BYTES;
#pragma unroll
    for (int shift = 1; shift <= 6; shift++) {
        u32 size = STACK_BYTES >> shift;
        if (size < 512)
            break;
        if (bpf_probe_read_user(s->stack, size & (STACK_BYTES - 1), (void *)sp) == 0)
            return size;
    }
    return 0;
}

// The mounted virtual thread: _vthread holds another Thread than _threadObj (the carrier's own).
static __always_inline void read_vthread(struct sample *s, struct anchor_addresses *a) {
    if (!a->vthread_slot || !a->thread_obj_slot)
        return;
    u64 vthread = 0, carrier = 0;
    if (bpf_probe_read_user(&vthread, sizeof(u64), (void *)a->vthread_slot) != 0 ||
        bpf_probe_read_user(&carrier, sizeof(u64), (void *)a->thread_obj_slot) != 0)
        return;
    if (!vthread || vthread == carrier)
        return;
    if (bpf_probe_read_user(&s->vthread_tid, sizeof(u64), (void *)(vthread + a->tid_offset)) == 0)
        s->vthread = vthread;
    else
        s->vthread_tid = 0;
}

// Reserve a record for an event of thread `pid_tgid` of a target and fill its header; NULL (counted)
// when the ring buffer is full.
static __always_inline struct sample *begin_sample(u64 pid_tgid, u32 event) {
    struct sample *s = samples.ringbuf_reserve(sizeof(struct sample));
    if (!s) {
        count(C_LOST);
        count(C_LOST_BY_EVENT + event);
        return 0;
    }
    s->time_ns = bpf_ktime_get_ns();
    s->tid = (u32)pid_tgid;
    s->cpu = bpf_get_smp_processor_id();
    s->flags = 0;
    s->pid = pid_tgid >> 32;
    s->stack_len = 0;
    s->kstack_len = 0;
    s->event = event;
    s->state = 0;
    s->weight = 0;
    s->detail = 0;
    bpf_get_current_comm(s->comm, sizeof(s->comm));
    return s;
}

// The user registers a program sees in user mode (a perf event that interrupted user code, a uprobe).
struct user_frame {
    u64 ip, sp, bp, r13;
};

// The current thread's user registers, kernel stack (when `user` is NULL: the event hit kernel code, the
// user registers are those saved on entry to the kernel), JavaThread anchor and user stack: everything
// the unwinder needs, whatever program took the record (perf event, tracepoint, uprobe).
static __always_inline void capture(void *ctx, struct sample *s, struct user_frame *user) {
    u64 ip = 0, sp = 0, bp = 0, r13 = 0;
    if (user) {
        ip = user->ip;
        sp = user->sp;
        bp = user->bp;
        r13 = user->r13;
    } else {
        s->flags |= FLAG_KERNEL_MODE;
        struct user_regs *saved = (struct user_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
        if (saved) {
            bpf_probe_read_kernel(&ip, sizeof(ip), &saved->ip);
            bpf_probe_read_kernel(&sp, sizeof(sp), &saved->sp);
            bpf_probe_read_kernel(&bp, sizeof(bp), &saved->bp);
            bpf_probe_read_kernel(&r13, sizeof(r13), &saved->r13);
        }
        long n = bpf_get_stack(ctx, s->kstack, sizeof(s->kstack), 0);
        s->kstack_len = n > 0 ? (u32)n : 0;
    }
    s->anchor_sp = 0;
    s->anchor_pc = 0;
    s->anchor_fp = 0;
    s->vthread = 0;
    s->vthread_tid = 0;
    u32 tid = s->tid;
    u64 stack_base = 0;
    struct anchor_addresses *anchor = java_threads.lookup(&tid);
    if (anchor) {
        stack_base = anchor->stack_base;
        bpf_probe_read_user(&s->anchor_sp, sizeof(u64), (void *)anchor->sp);
        bpf_probe_read_user(&s->anchor_pc, sizeof(u64), (void *)anchor->pc);
        bpf_probe_read_user(&s->anchor_fp, sizeof(u64), (void *)anchor->fp);
        read_vthread(s, anchor);
    }
    s->ip = ip;
    s->sp = sp;
    s->bp = bp;
    s->r13 = r13;

    if (sp == 0) {
        count(C_NO_USER);
    } else {
        s->stack_len = copy_stack(s, sp, stack_base);
        if (stack_base > sp && s->stack_len < stack_base - sp) {
            s->flags |= FLAG_TRUNCATED;
            count(C_TRUNCATED);
        }
    }
}

// The other events' programs (compiled in only when asked for: one clang run for all of them).
#ifdef EVENT_WALL_PROGRAM
#include "wall.h"
#endif
#ifdef EVENT_ALLOC_PROGRAM
#include "alloc.h"
#endif
#ifdef EVENT_LOCK_PROGRAM
#include "lock.h"
#endif

int on_sample(struct perf_sample_ctx *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    count(C_SEEN);

    struct sample *s = begin_sample(pid_tgid, EVENT_CPU);
    if (!s)
        return 0;
    // in user mode the interrupted registers are the user's; in the kernel, ctx->regs are the kernel's
    struct user_frame user = {ctx->regs.ip, ctx->regs.sp, ctx->regs.bp, ctx->regs.r13};
    capture(ctx, s, (ctx->regs.cs & 3) == 3 ? &user : 0);
    // No wakeup: Python drains the buffer on its own clock (every ~100 ms), so a sample costs no
    // context switch into pyprof. The buffer holds 0.5 s of samples (sampler.py sizes it).
    samples.ringbuf_submit(s, BPF_RB_NO_WAKEUP);
    return 0;
}
