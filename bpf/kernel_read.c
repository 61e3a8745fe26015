// Reads kernel memory (pyprof/kernel/text.py loads this): the bytes of one kernel function, for the
// kernel-safety check on machines without /proc/kcore.
//
// A raw tracepoint on sys_enter fires on every system call; only the first call of the loading process
// after Python armed `request` does the copy (bpf_probe_read_kernel of READ_BYTES bytes from
// request.address into `result`), so the program costs other processes one map lookup and a compare.

#ifndef READ_BYTES
#define READ_BYTES 1024
#endif

struct read_request {
    u64 address;
    u32 tgid;
    u32 armed;
};

struct read_result {
    s64 status;      // bpf_probe_read_kernel's return; 1 while nothing was read
    u8 bytes[READ_BYTES];
};

BPF_ARRAY(request, struct read_request, 1);
BPF_ARRAY(result, struct read_result, 1);

RAW_TRACEPOINT_PROBE(sys_enter) {
    int zero = 0;
    struct read_request *req = request.lookup(&zero);
    if (!req || !req->armed || (bpf_get_current_pid_tgid() >> 32) != req->tgid)
        return 0;
    struct read_result *out = result.lookup(&zero);
    if (!out)
        return 0;
    req->armed = 0;
    out->status = bpf_probe_read_kernel(out->bytes, READ_BYTES, (void *)req->address);
    return 0;
}
