// nmethod lifecycle events of the profiled JVMs, from uprobes on their libjvm (pyprof/codemap/probes.py
// compiles this once per pyprof process and attaches pid-filtered uprobes per JVM).
//
// Probes (attached by symbol, per JDK and GC; see live.py):
//   EVENT_REGISTER      <GC>Heap::register_nmethod(this, nmethod* nm)   -> nm = 2nd argument
//   EVENT_UNREGISTER    <GC>Heap::unregister_nmethod(this, nmethod* nm) -> nm = 2nd argument
//   EVENT_FREE          static CodeCache::free(CodeBlob* cb)             -> cb = 1st argument
//   EVENT_NOT_ENTRANT   nmethod::make_not_entrant(this, ...)             -> this = 1st argument
//   EVENT_NOT_ENTRANT_OR_ZOMBIE (JDK 17) nmethod::make_not_entrant_or_zombie(this, int state)
//
// Ring buffer `events`, one record per call:
//   u64 time_ns   bpf_ktime_get_ns()
//   u64 address   nmethod* / CodeBlob*
//   u64 arg       extra argument (the state for make_not_entrant_or_zombie), else 0
//   u32 tid       calling thread
//   u32 kind      EVENT_*
//   u32 pid       the JVM (tgid) the event came from: events of every JVM share the one ring buffer
//   u32 pad
// Array `lost` [0]: records that did not fit in the ring buffer.

#include <uapi/linux/ptrace.h>

#define EVENT_REGISTER 1
#define EVENT_UNREGISTER 2
#define EVENT_FREE 3
#define EVENT_NOT_ENTRANT 4
#define EVENT_NOT_ENTRANT_OR_ZOMBIE 5

struct nmethod_event {
    u64 time_ns;
    u64 address;
    u64 arg;
    u32 tid;
    u32 kind;
    u32 pid;
    u32 pad;
};

BPF_RINGBUF_OUTPUT(events, 64);   // pages
BPF_ARRAY(lost, u64, 1);

static __always_inline int emit(u32 kind, u64 address, u64 arg) {
    struct nmethod_event ev = {};
    ev.time_ns = bpf_ktime_get_ns();
    ev.address = address;
    ev.arg = arg;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    ev.tid = (u32)pid_tgid;
    ev.pid = pid_tgid >> 32;
    ev.kind = kind;
    if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n) __sync_fetch_and_add(n, 1);
    }
    return 0;
}

int on_register(struct pt_regs *ctx) { return emit(EVENT_REGISTER, PT_REGS_PARM2(ctx), 0); }
int on_unregister(struct pt_regs *ctx) { return emit(EVENT_UNREGISTER, PT_REGS_PARM2(ctx), 0); }
int on_free(struct pt_regs *ctx) { return emit(EVENT_FREE, PT_REGS_PARM1(ctx), 0); }
int on_not_entrant(struct pt_regs *ctx) { return emit(EVENT_NOT_ENTRANT, PT_REGS_PARM1(ctx), 0); }
int on_not_entrant_or_zombie(struct pt_regs *ctx) {
    return emit(EVENT_NOT_ENTRANT_OR_ZOMBIE, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx));
}
