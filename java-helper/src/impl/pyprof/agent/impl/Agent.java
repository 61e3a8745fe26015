package pyprof.agent.impl;

import java.lang.instrument.Instrumentation;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * The running agent: a py4j gateway on 127.0.0.1 (token required), the connection file, a JFR feed.
 *
 * <p>Constructed by pyprof.agent.boot.AgentMain in a fresh class loader. {@link #close()} ("unload")
 * deletes the connection file, closes the JFR stream, shuts the gateway and every connection down, waits
 * for every thread the agent started, then tells AgentMain, so a later load starts a new agent.
 */
public final class Agent implements AutoCloseable {
    static final String VERSION = "0.1.0";
    private static final long JOIN_MS = 5000;
    private static final long COMPILE_WAIT_MS = 300;

    private final Runnable onStopped;
    private final boolean dynamic;
    private final long startedMs = System.currentTimeMillis();
    private final long pid = ProcessHandle.current().pid();
    private final ThreadGroup group = new ThreadGroup("pyprof-agent");
    private final String token;
    private final RestrictedGateway gateway;
    private final Diagnostics diagnostics;
    private final JfrFeed jfr;
    private final String jfrError;
    private final ConnectionFile file;
    private final int port;
    private final Thread exitHook;
    private final Object stopLock = new Object();
    private volatile boolean stopping;
    private volatile Thread stopper;

    public Agent(String args, Instrumentation inst, boolean dynamic, Runnable onStopped) throws Exception {
        this.onStopped = onStopped;
        this.dynamic = dynamic;
        this.token = newToken();
        boolean wantJfr = !args.contains("jfr=false");
        this.diagnostics = new Diagnostics();
        JfrFeed feed = null;
        String err = null;
        if (wantJfr) {
            try {
                feed = new JfrFeed(inst, group);
            } catch (Throwable t) {
                err = AgentUtil.oneLine(t);   // no JFR (disabled, or a JRE without jdk.jfr): the rest works
            }
        } else {
            err = "disabled (jfr=false)";
        }
        this.jfr = feed;
        this.jfrError = err;
        this.gateway = new RestrictedGateway(new EntryPoint(), EntryPoint.methods(), token, group);
        try {
            this.port = gateway.startServing(10_000, this::gatewayExited);
            this.file = ConnectionFile.create(pid, connectionJson());
        } catch (Exception e) {
            stopEverything(null);
            throw e;
        }
        ConnectionFile f = this.file;
        this.exitHook = new Thread(() -> f.delete(token), "pyprof-agent-exit");
        try {
            Runtime.getRuntime().addShutdownHook(exitHook);
        } catch (IllegalStateException e) {
            stopEverything(f);   // the JVM began to exit while the agent started: leave nothing behind
            throw e;
        }
    }

    /** The accept loop ended: by unload (fine), or by an error (then stop everything, so a load works). */
    private void gatewayExited() {
        if (stopping || file == null) {
            return;
        }
        System.err.println("pyprof-agent: the gateway stopped unexpectedly; the agent stops too");
        synchronized (stopLock) {
            if (stopper != null) {
                return;
            }
            Thread t = new Thread(group, this::close, "pyprof-agent-unload");
            t.setDaemon(true);
            stopper = t;
            t.start();
        }
    }

    private static String newToken() {
        byte[] b = new byte[32];
        new SecureRandom().nextBytes(b);
        StringBuilder sb = new StringBuilder(64);
        for (byte x : b) {
            sb.append(String.format("%02x", x));
        }
        return sb.toString();
    }

    private String connectionJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("agent", "pyprof-agent");
        m.put("version", VERSION);
        m.put("pid", pid);
        m.put("address", AgentUtil.LOOPBACK.getHostAddress());
        m.put("port", port);
        m.put("token", token);
        m.put("started_ms", startedMs);
        m.put("dynamic", dynamic);
        return Json.write(m) + "\n";
    }

    /** Unload: stop everything (idempotent); returns when every agent thread has ended. */
    @Override
    public void close() {
        stopEverything(file);
    }

    private void stopEverything(ConnectionFile f) {
        synchronized (stopLock) {
            if (stopping && f != null) {
                return;
            }
            stopping = true;
            if (f != null) {
                f.delete(token);
            }
            if (exitHook != null) {
                try {
                    Runtime.getRuntime().removeShutdownHook(exitHook);
                } catch (IllegalStateException e) {
                    // the JVM is exiting: the hook runs anyway
                }
            }
            if (jfr != null) {
                try {
                    jfr.close();
                } catch (RuntimeException e) {
                    System.err.println("pyprof-agent: closing the JFR stream: " + AgentUtil.oneLine(e));
                }
            }
            try {
                gateway.shutdown();
            } catch (RuntimeException e) {
                System.err.println("pyprof-agent: stopping the gateway: " + AgentUtil.oneLine(e));
            }
            long deadline = System.currentTimeMillis() + JOIN_MS;
            for (Thread t : agentThreads()) {
                if (t == Thread.currentThread()) {
                    continue;
                }
                try {
                    t.join(Math.max(1, deadline - System.currentTimeMillis()));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    break;
                }
            }
            if (f != null) {
                onStopped.run();
            }
        }
    }

    /** Every thread the agent started that is still alive (the JFR stream's included). */
    List<Thread> agentThreads() {
        List<Thread> out = new ArrayList<>();
        for (Thread t : gateway.threads()) {
            if (t.isAlive()) {
                out.add(t);
            }
        }
        Thread[] inGroup = new Thread[group.activeCount() + 16];
        int n = group.enumerate(inGroup, true);
        for (int i = 0; i < n; i++) {
            if (!out.contains(inGroup[i])) {
                out.add(inGroup[i]);
            }
        }
        Thread s = jfr == null ? null : jfr.thread();
        if (s != null && s.isAlive() && !out.contains(s)) {
            out.add(s);
        }
        Thread st = stopper;
        if (st != null && st.isAlive() && !out.contains(st)) {
            out.add(st);
        }
        return out;
    }

    private Map<String, Object> status() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("agent", "pyprof-agent");
        m.put("version", VERSION);
        m.put("pid", pid);
        m.put("port", port);
        m.put("dynamic", dynamic);
        m.put("started_ms", startedMs);
        m.put("java_version", System.getProperty("java.version"));
        m.put("vm", System.getProperty("java.vm.name"));
        m.put("stopping", stopping);
        List<Map<String, Object>> threads = new ArrayList<>();
        for (Thread t : agentThreads()) {
            Map<String, Object> tm = new LinkedHashMap<>();
            tm.put("name", t.getName());
            tm.put("java_id", t.getId());
            threads.add(tm);
        }
        m.put("threads", threads);
        if (jfr != null) {
            m.put("jfr", jfr.status());
        } else {
            Map<String, Object> j = new LinkedHashMap<>();
            j.put("enabled", List.of());
            j.put("error", jfrError);
            m.put("jfr", j);
        }
        return m;
    }

    private static String error(Throwable t) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("error", AgentUtil.oneLine(t));
        return Json.write(m);
    }

    /**
     * What a client may call (py4j "t"): public methods returning String; all return JSON (or text) and
     * never throw, so no Java object ever reaches the client.
     */
    public final class EntryPoint {
        static Set<String> methods() {
            Set<String> out = new TreeSet<>();
            for (Method m : EntryPoint.class.getDeclaredMethods()) {
                if (Modifier.isPublic(m.getModifiers()) && !Modifier.isStatic(m.getModifiers())) {
                    out.add(m.getName());
                }
            }
            return out;
        }

        public String status() {
            try {
                return Json.write(Agent.this.status());
            } catch (Throwable t) {
                return error(t);
            }
        }

        /** Compiler.codelist, in process: `id level state method [blob, begin - end]` per nmethod. */
        public String codelist() {
            try {
                Map<String, Object> m = new LinkedHashMap<>();
                long t0 = System.nanoTime();
                m.put("codelist", diagnostics.codelist());
                m.put("seconds", (System.nanoTime() - t0) / 1e9);
                return Json.write(m);
            } catch (Throwable t) {
                return error(t);
            }
        }

        public String threads() {
            try {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("threads", diagnostics.threads());
                return Json.write(m);
            } catch (Throwable t) {
                return error(t);
            }
        }

        /** JIT events after sequence number `since` (at most `max`). */
        public String events(long since, int max) {
            try {
                if (jfr == null) {
                    throw new IllegalStateException("no JFR: " + jfrError);
                }
                return Json.write(jfr.jitEvents(since, Math.max(0, Math.min(max, 100_000))));
            } catch (Throwable t) {
                return error(t);
            }
        }

        /** GC and safepoint pauses after sequence number `since` (at most `max`). */
        public String pauses(long since, int max) {
            try {
                if (jfr == null) {
                    throw new IllegalStateException("no JFR: " + jfrError);
                }
                return Json.write(jfr.pauses(since, Math.max(0, Math.min(max, 100_000))));
            } catch (Throwable t) {
                return error(t);
            }
        }

        /** compile id -> method, tier, OSR, inlined methods (comma-separated ids). */
        public String compiles(String ids) {
            try {
                Map<String, Object> m = new LinkedHashMap<>();
                if (jfr != null) {
                    List<Long> wanted = new ArrayList<>();
                    for (String s : ids.split(",")) {
                        if (!s.trim().isEmpty()) {
                            wanted.add(Long.parseLong(s.trim()));
                        }
                    }
                    // a compile that just finished may still sit in JFR's buffers: flush, wait a little
                    long deadline = System.nanoTime() + COMPILE_WAIT_MS * 1_000_000L;
                    boolean missing = true;
                    while (missing) {
                        missing = false;
                        for (Long id : wanted) {
                            Object c = jfr.compile(id);
                            m.put(Long.toString(id), c);
                            missing |= c == null;
                        }
                        if (!missing || System.nanoTime() > deadline) {
                            break;
                        }
                        jfr.requestFlush();
                        Thread.sleep(10);
                    }
                }
                Map<String, Object> r = new LinkedHashMap<>();
                r.put("compiles", m);
                return Json.write(r);
            } catch (Throwable t) {
                return error(t);
            }
        }

        /** Unload: answers at once, then stops everything on a thread of its own (this one is a client's). */
        public String unload() {
            try {
                synchronized (stopLock) {
                    if (stopper == null) {
                        Thread t = new Thread(() -> {
                            try {
                                Thread.sleep(50);   // let this reply reach the client first
                            } catch (InterruptedException e) {
                                Thread.currentThread().interrupt();
                            }
                            Agent.this.close();
                        }, "pyprof-agent-unload");
                        t.setDaemon(true);
                        stopper = t;
                        t.start();
                    }
                }
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("unloading", true);
                return Json.write(m);
            } catch (Throwable t) {
                return error(t);
            }
        }
    }
}
