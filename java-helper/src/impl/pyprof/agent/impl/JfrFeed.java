package pyprof.agent.impl;

import java.lang.instrument.Instrumentation;
import java.lang.reflect.Method;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.function.Consumer;

import jdk.jfr.EventType;
import jdk.jfr.FlightRecorder;
import jdk.jfr.Recording;
import jdk.jfr.ValueDescriptor;
import jdk.jfr.consumer.RecordedClass;
import jdk.jfr.consumer.RecordedEvent;
import jdk.jfr.consumer.RecordedMethod;
import jdk.jfr.consumer.RecordedObject;
import jdk.jfr.consumer.RecordedThread;
import jdk.jfr.consumer.RecordingStream;

/**
 * JIT events and pauses from a JFR RecordingStream, kept in bounded in-memory rings that pyprof polls.
 *
 * <p>JIT: jdk.Compilation (compile id -> method, tier, OSR, sizes), jdk.CompilerInlining (what each
 * compile inlined), jdk.Deoptimization, jdk.CompilationFailure, jdk.CodeCacheFull, jdk.ClassUnload; each
 * only where the JDK has it. Pauses: jdk.GCPhasePause (every stop-the-world GC pause, named by its
 * jdk.GarbageCollection), jdk.SafepointBegin/End (the whole safepoint, time-to-safepoint included) named
 * by jdk.ExecuteVMOperation. No stack traces are recorded.
 *
 * <p>JFR hands events to a stream once a second; when pyprof polls, the agent asks JFR to flush
 * first (see requestFlush), so a poller sees events about one poll interval after they happened.
 */
final class JfrFeed implements AutoCloseable {
    static final long MIN_FLUSH_MS = 50;
    // Memory bounds (worst case, a JVM that compiles all the time: about 15 MB). Events are kept as
    // JSON text, not as objects; older ones are dropped (readers are told how many).
    private static final int MAX_JIT = 16384;              // JIT events (~350 B each)
    private static final int MAX_PAUSES = 4096;            // GC / safepoint pauses
    private static final int MAX_COMPILES = 16384;         // compile id -> method, tier (~300 B each)
    private static final int MAX_INLINING = 2048;          // compile id -> what it inlined (last compiles)
    private static final int MAX_INLINED_PER_COMPILE = 32;
    private static final int MAX_PENDING = 1024;

    static final List<String> JIT_EVENTS = List.of("jdk.Compilation", "jdk.CompilerInlining",
            "jdk.Deoptimization", "jdk.CompilationFailure", "jdk.CodeCacheFull", "jdk.ClassUnload");
    static final List<String> PAUSE_EVENTS = List.of("jdk.GCPhasePause", "jdk.GarbageCollection",
            "jdk.SafepointBegin", "jdk.SafepointEnd", "jdk.ExecuteVMOperation");

    private final RecordingStream stream;
    private final Set<String> enabled = new TreeSet<>();
    private final Ring jit = new Ring(MAX_JIT, true);
    private final Ring pauses = new Ring(MAX_PAUSES, false);
    private final Map<Long, String> compiles = lru(MAX_COMPILES);
    private final Map<Long, String> inlined = lru(MAX_INLINING);
    private final Map<Long, List<Map<String, Object>>> inlining = lru(MAX_PENDING);
    private final Map<Long, Map<String, Object>> gcs = lru(MAX_PENDING);
    private final Map<Long, Long> safepointStarts = lru(MAX_PENDING);
    private final Map<Long, String> vmOperations = lru(MAX_PENDING);
    private final Thread streamThread;
    private final Object flushLock = new Object();
    private long lastFlush;
    private volatile Object flushRepository;
    private volatile Method flushMethod;
    private volatile Method notifyMethod;
    private volatile String flushNote = "";
    private volatile String error;

    JfrFeed(Instrumentation inst, ThreadGroup group) {
        Set<String> available = new HashSet<>();
        for (EventType t : FlightRecorder.getFlightRecorder().getEventTypes()) {
            available.add(t.getName());
        }
        stream = new RecordingStream();
        stream.setMaxAge(Duration.ofSeconds(30));
        stream.setMaxSize(32L << 20);
        subscribe(available, "jdk.Compilation", this::onCompilation);
        subscribe(available, "jdk.CompilerInlining", this::onInlining);
        subscribe(available, "jdk.Deoptimization", this::onDeoptimization);
        subscribe(available, "jdk.CompilationFailure", e -> onGenericJit("compile_failure", e));
        subscribe(available, "jdk.CodeCacheFull", e -> onGenericJit("code_cache_full", e));
        subscribe(available, "jdk.ClassUnload", e -> onGenericJit("class_unload", e));
        subscribe(available, "jdk.GCPhasePause", this::onGcPause);
        subscribe(available, "jdk.GarbageCollection", this::onGarbageCollection);
        subscribe(available, "jdk.SafepointBegin", this::onSafepointBegin);
        subscribe(available, "jdk.SafepointEnd", this::onSafepointEnd);
        subscribe(available, "jdk.ExecuteVMOperation", this::onVmOperation);
        stream.onError(t -> error = AgentUtil.oneLine(t));
        if (inst != null) {
            prepareFlush(inst);
        } else {
            flushNote = "events reach pyprof once a second (no Instrumentation: no on-demand flush)";
        }
        // Not startAsync(): its "JFR Event Stream" thread is not a daemon and would keep the JVM alive.
        streamThread = new Thread(group, () -> {
            try {
                stream.start();   // returns when the stream is closed
            } catch (Throwable t) {
                error = AgentUtil.oneLine(t);
            }
        }, "pyprof-agent-jfr");
        streamThread.setDaemon(true);
        streamThread.start();
    }

    private void subscribe(Set<String> available, String name, Consumer<RecordedEvent> handler) {
        if (!available.contains(name)) {
            return;
        }
        stream.enable(name).withoutStackTrace().withThreshold(Duration.ZERO);
        stream.onEvent(name, e -> {
            try {
                handler.accept(e);
            } catch (RuntimeException ex) {
                error = name + ": " + AgentUtil.oneLine(ex);
            }
        });
        enabled.add(name);
    }

    /**
     * JFR writes events out once a second (RequestEngine/PeriodicEvents: never more often, whatever a
     * recording asks). A reader that polls gets fresh events by asking for a flush itself: what JFR's own
     * flush task does, MetadataRepository.flush() then Utils.notifyFlush() (jdk.jfr.internal, opened to
     * this agent alone through Instrumentation.redefineModule; the same on JDK 17, 21 and 25, with Utils
     * moved to jdk.jfr.internal.util in 22+). At most one flush per MIN_FLUSH_MS, and only when asked.
     */
    private void prepareFlush(Instrumentation inst) {
        try {
            Module jfr = Recording.class.getModule();
            Module self = JfrFeed.class.getModule();
            List<String> packages = new ArrayList<>();
            for (String p : List.of("jdk.jfr.internal", "jdk.jfr.internal.util")) {
                if (jfr.getPackages().contains(p) && !jfr.isOpen(p, self)) {
                    packages.add(p);
                }
            }
            if (!packages.isEmpty()) {
                Map<String, Set<Module>> opens = new LinkedHashMap<>();
                packages.forEach(p -> opens.put(p, Set.of(self)));
                inst.redefineModule(jfr, Set.of(), Map.of(), opens, Set.of(), Map.of());
            }
            Class<?> repo = Class.forName("jdk.jfr.internal.MetadataRepository", true, Recording.class.getClassLoader());
            Object instance = repo.getMethod("getInstance").invoke(null);
            Method flush = repo.getMethod("flush");
            Class<?> utils;
            try {
                utils = Class.forName("jdk.jfr.internal.util.Utils", true, Recording.class.getClassLoader());
                utils.getMethod("notifyFlush");
            } catch (ReflectiveOperationException e) {
                utils = Class.forName("jdk.jfr.internal.Utils", true, Recording.class.getClassLoader());
            }
            Method notify = utils.getMethod("notifyFlush");
            flush.setAccessible(true);
            notify.setAccessible(true);
            flushRepository = instance;
            flushMethod = flush;
            notifyMethod = notify;
        } catch (Throwable t) {
            flushNote = "events reach pyprof once a second (no on-demand flush: " + AgentUtil.oneLine(t) + ")";
        }
    }

    /** Ask JFR to write out what it has now (rate-limited); the stream thread then dispatches it. */
    void requestFlush() {
        Method flush = flushMethod;
        if (flush == null) {
            return;
        }
        long now = System.nanoTime();
        synchronized (flushLock) {
            if (now - lastFlush < MIN_FLUSH_MS * 1_000_000L) {
                return;
            }
            lastFlush = now;
        }
        try {
            flush.invoke(flushRepository);
            notifyMethod.invoke(null);
        } catch (Throwable t) {
            flushMethod = null;
            flushNote = "on-demand flush failed: " + AgentUtil.oneLine(t);
        }
    }

    // ---- JIT ------------------------------------------------------------------------------------------
    private void onCompilation(RecordedEvent e) {
        Map<String, Object> m = base("compile", e);
        long id = e.getLong("compileId");
        m.put("compile_id", id);
        m.put("method", methodName(e.getValue("method")));
        putIf(m, e, "compileLevel", "level");
        putIf(m, e, "isOsr", "osr");
        putIf(m, e, "succeded", "success");
        putIf(m, e, "succeeded", "success");
        putIf(m, e, "codeSize", "code_size");
        putIf(m, e, "inlinedBytes", "inlined_bytes");
        putIf(m, e, "compiler", "compiler");
        List<Map<String, Object>> decisions;
        synchronized (this) {
            decisions = inlining.remove(id);
        }
        Map<String, Object> info = new LinkedHashMap<>(m);
        info.remove("kind");
        String infoJson = Json.write(info);
        String inlinedJson = decisions == null ? null : Json.write(decisions);
        synchronized (this) {
            compiles.put(id, infoJson);
            if (inlinedJson != null) {
                inlined.put(id, inlinedJson);
            }
        }
        m.put("inlined_methods", decisions == null ? 0 : decisions.size());
        jit.add(m);
    }

    private void onInlining(RecordedEvent e) {
        long id = e.getLong("compileId");
        Map<String, Object> m = new LinkedHashMap<>();
        Object callee = e.getValue("callee");
        if (callee instanceof RecordedObject) {
            RecordedObject c = (RecordedObject) callee;
            String type = text(c, "type", "?");
            String name = text(c, "name", "?");
            String desc = text(c, "descriptor", "");
            m.put("method", type.replace('/', '.') + "." + name + desc);
        }
        m.put("caller", methodName(e.getValue("caller")));
        putIf(m, e, "bci", "bci");
        putIf(m, e, "succeeded", "inlined");
        putIf(m, e, "message", "message");
        synchronized (this) {
            List<Map<String, Object>> list = inlining.computeIfAbsent(id, k -> new ArrayList<>());
            if (list.size() < MAX_INLINED_PER_COMPILE) {
                list.add(m);
            }
        }
    }

    private void onDeoptimization(RecordedEvent e) {
        Map<String, Object> m = base("deopt", e);
        m.put("compile_id", e.getLong("compileId"));
        m.put("method", methodName(e.getValue("method")));
        putIf(m, e, "compiler", "compiler");
        putIf(m, e, "bci", "bci");
        putIf(m, e, "lineNumber", "line");
        putIf(m, e, "instruction", "instruction");
        putIf(m, e, "reason", "reason");
        putIf(m, e, "action", "action");
        jit.add(m);
    }

    private void onGenericJit(String kind, RecordedEvent e) {
        Map<String, Object> m = base(kind, e);
        for (ValueDescriptor d : e.getFields()) {
            String n = d.getName();
            if (n.equals("startTime") || n.equals("duration") || n.equals("eventThread")
                    || n.equals("stackTrace")) {
                continue;
            }
            Object v = e.getValue(n);
            if (v instanceof RecordedClass) {
                v = ((RecordedClass) v).getName();
            } else if (v instanceof RecordedMethod) {
                v = methodName(v);
            } else if (!(v instanceof Number || v instanceof Boolean || v instanceof String)) {
                continue;
            }
            m.put(snake(n), v);
        }
        jit.add(m);
    }

    // ---- pauses ---------------------------------------------------------------------------------------
    private void onGcPause(RecordedEvent e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("kind", "gc");
        m.put("start_ns", AgentUtil.epochNanos(e.getStartTime()));
        m.put("duration_ns", AgentUtil.nanos(e.getDuration()));
        m.put("gc_id", e.getLong("gcId"));
        putIf(m, e, "name", "phase");
        pauses.add(m);
    }

    private void onGarbageCollection(RecordedEvent e) {
        Map<String, Object> m = new LinkedHashMap<>();
        putIf(m, e, "name", "name");
        putIf(m, e, "cause", "cause");
        putIf(m, e, "sumOfPauses", "sum_of_pauses_ns");
        putIf(m, e, "longestPause", "longest_pause_ns");
        m.put("gc_start_ns", AgentUtil.epochNanos(e.getStartTime()));
        m.put("gc_duration_ns", AgentUtil.nanos(e.getDuration()));
        synchronized (this) {
            gcs.put(e.getLong("gcId"), m);
        }
    }

    private void onSafepointBegin(RecordedEvent e) {
        synchronized (this) {
            safepointStarts.put(e.getLong("safepointId"), AgentUtil.epochNanos(e.getStartTime()));
        }
    }

    private void onSafepointEnd(RecordedEvent e) {
        long id = e.getLong("safepointId");
        long end = AgentUtil.epochNanos(e.getEndTime());
        Long start;
        synchronized (this) {
            start = safepointStarts.remove(id);
        }
        long s = start != null ? start : AgentUtil.epochNanos(e.getStartTime());
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("kind", "safepoint");
        m.put("start_ns", s);
        m.put("duration_ns", Math.max(0, end - s));
        m.put("safepoint_id", id);
        pauses.add(m);
    }

    private void onVmOperation(RecordedEvent e) {
        if (!e.hasField("safepointId") || (e.hasField("safepoint") && !e.getBoolean("safepoint"))) {
            return;
        }
        synchronized (this) {
            vmOperations.put(e.getLong("safepointId"), text(e, "operation", "?"));
        }
    }

    // ---- queries (gateway threads) --------------------------------------------------------------------
    Map<String, Object> jitEvents(long since, int max) {
        requestFlush();
        return jit.since(since, max, "events", null);
    }

    Map<String, Object> pauses(long since, int max) {
        requestFlush();
        return pauses.since(since, max, "pauses", p -> {
            synchronized (this) {
                if ("gc".equals(p.get("kind"))) {
                    Map<String, Object> gc = gcs.get((Long) p.get("gc_id"));
                    if (gc != null) {
                        p.putAll(gc);
                    }
                } else if ("safepoint".equals(p.get("kind"))) {
                    String op = vmOperations.get((Long) p.get("safepoint_id"));
                    if (op != null) {
                        p.put("operation", op);
                    }
                }
            }
        });
    }

    /** The compile's JSON with its inlining decisions (when still known), or null. */
    synchronized Json.Raw compile(long id) {
        String c = compiles.get(id);
        if (c == null) {
            return null;
        }
        String inl = inlined.get(id);
        return new Json.Raw(c.substring(0, c.length() - 1) + ",\"inlined\":" + (inl == null ? "[]" : inl) + "}");
    }

    Map<String, Object> status() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("enabled", new ArrayList<>(enabled));
        m.put("flush_ms", flushMethod != null ? MIN_FLUSH_MS : 1000);
        m.put("flush_on_demand", flushMethod != null);
        if (!flushNote.isEmpty()) {
            m.put("note", flushNote);
        }
        m.put("error", error);
        m.put("jit_events", jit.next() - 1);
        m.put("pauses", pauses.next() - 1);
        synchronized (this) {
            m.put("compiles_known", compiles.size());
        }
        return m;
    }

    Thread thread() {
        return streamThread;
    }

    @Override
    public void close() {
        stream.close();
        Thread t = streamThread;
        if (t != null && t != Thread.currentThread()) {
            try {
                t.join(5000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    // ---- helpers --------------------------------------------------------------------------------------
    private static Map<String, Object> base(String kind, RecordedEvent e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("kind", kind);
        m.put("time_ns", AgentUtil.epochNanos(e.getStartTime()));
        m.put("end_ns", AgentUtil.epochNanos(e.getEndTime()));
        RecordedThread t = e.getThread();
        if (t != null) {
            m.put("os_tid", t.getOSThreadId());
            m.put("thread", t.getJavaName() != null ? t.getJavaName() : t.getOSName());
        }
        return m;
    }

    private static void putIf(Map<String, Object> m, RecordedObject e, String field, String key) {
        if (!e.hasField(field)) {
            return;
        }
        Object v = e.getValue(field);
        if (v instanceof RecordedMethod) {
            v = methodName(v);
        } else if (v instanceof RecordedClass) {
            v = ((RecordedClass) v).getName();
        } else if (v instanceof Duration) {
            v = ((Duration) v).toNanos();
        } else if (v != null && !(v instanceof Number || v instanceof Boolean || v instanceof String)) {
            v = String.valueOf(v);
        }
        m.put(key, v);
    }

    /** A field as text (getValue is generic: String.valueOf(getValue(..)) would pick valueOf(char[])). */
    private static String text(RecordedObject o, String field, String missing) {
        if (!o.hasField(field)) {
            return missing;
        }
        Object v = o.getValue(field);
        return v == null ? missing : v.toString();
    }

    /** `holder.name(descriptor)`, as Compiler.codelist prints methods (java.lang.String.hashCode()I). */
    static String methodName(Object o) {
        if (!(o instanceof RecordedMethod)) {
            return null;
        }
        RecordedMethod m = (RecordedMethod) o;
        String holder = m.getType() == null ? "?" : m.getType().getName();
        return holder + "." + m.getName() + m.getDescriptor();
    }

    private static String snake(String camel) {
        StringBuilder sb = new StringBuilder();
        for (char c : camel.toCharArray()) {
            if (Character.isUpperCase(c)) {
                sb.append('_').append(Character.toLowerCase(c));
            } else {
                sb.append(c);
            }
        }
        return sb.toString();
    }

    private static <K, V> Map<K, V> lru(int max) {
        return new LinkedHashMap<K, V>(256, 0.75f, false) {
            @Override
            protected boolean removeEldestEntry(Map.Entry<K, V> eldest) {
                return size() > max;
            }
        };
    }

    /** A bounded ring of events numbered 1, 2, ... ("seq"); readers ask for those after `since`. Kept as
     * JSON text (serialized once, when added) or, for pauses that are completed at query time, as maps. */
    static final class Ring {
        private final Object[] buf;
        private final boolean asText;
        private long nextSeq = 1;     // seq of the next item; item seq s lives at buf[(s - 1) % length]

        Ring(int max, boolean asText) {
            this.buf = new Object[max];
            this.asText = asText;
        }

        synchronized void add(Map<String, Object> m) {
            m.put("seq", nextSeq);
            buf[(int) ((nextSeq - 1) % buf.length)] = asText ? new Json.Raw(Json.write(m)) : m;
            nextSeq++;
        }

        synchronized long next() {
            return nextSeq;
        }

        @SuppressWarnings("unchecked")
        Map<String, Object> since(long since, int max, String key, Consumer<Map<String, Object>> decorate) {
            List<Object> out = new ArrayList<>();
            long oldest;
            long last;
            synchronized (this) {
                oldest = Math.max(1, nextSeq - buf.length);
                long from = Math.max(since + 1, oldest);
                last = Math.max(0, from - 1);
                for (long s = from; s < nextSeq && out.size() < max; s++) {
                    Object o = buf[(int) ((s - 1) % buf.length)];
                    out.add(o instanceof Map ? new LinkedHashMap<>((Map<String, Object>) o) : o);
                    last = s;
                }
                if (out.isEmpty()) {
                    last = nextSeq - 1;
                }
            }
            if (decorate != null) {
                for (Object o : out) {
                    if (o instanceof Map) {
                        decorate.accept((Map<String, Object>) o);
                    }
                }
            }
            Map<String, Object> r = new LinkedHashMap<>();
            r.put("last", last);
            r.put("dropped", Math.max(0, oldest - since - 1));
            r.put(key, out);
            return r;
        }
    }
}
