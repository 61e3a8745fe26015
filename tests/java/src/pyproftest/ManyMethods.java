package pyproftest;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.lang.management.CompilationMXBean;
import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A JVM with tens of thousands of nmethods, quickly: the target of bench/codecache.py.
 *
 * args: [classes (default 250)] [methods per class (default 100)] [name prefix (default "pyproftest.many.C")].
 *
 * What it does:
 * 1. Generates `classes` classes at run time with {@link ClassFile} (class files written by hand, version
 *    49 so no stack maps are needed) and defines them in one {@link Loader}. Class k is
 *    `<prefix><k>` with `methods` static methods `m0(J)J .. m<n-1>(J)J` (47 bytes of long arithmetic each:
 *    larger than C1's inlining limit of 35 bytes, so every one is compiled on its own) and a static
 *    `drive()J` that calls each m<i> once.
 * 2. Calls every class's drive() in rounds, without pause, until the JIT is done: from round 300 on (each
 *    m<i> has been invoked more often than Tier3InvocationThreshold = 200, and the interpreter has told the
 *    compile policy at 256 invocations) it stops when the total compilation time has not grown for 1 s
 *    (at most 300 s). Calling in rounds, not one class after another, keeps queued compile tasks from
 *    going stale (the tiered policy drops tasks of methods that stopped being called).
 * 3. Prints "ready rounds=<r> seconds=<s> generated=<classes * (methods + 1)>" and sleeps until killed,
 *    keeping every class reachable (nothing is unloaded).
 *
 * stdout: "defined <classes>", "round <r> <seconds>" every 50 rounds, then "ready ...".
 *
 * Run it with `-Xbatch -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m` (bench/codecache.py does):
 * blocking C1 compiles happen the moment a method crosses the threshold (with background compiles, the
 * queue grows by thousands at once, the policy raises its thresholds with the queue length and drops
 * stale tasks); a C1-only JVM otherwise gets a 48 MB code cache, in which JDK 21 and 25 kept only ~22k of
 * 50k compiled methods (measured). So run, 500 x 100 gives ~51.7k nmethods in 6-13 s on two cores on
 * JDK 17, 21 and 25. CodeCacheChurn reuses the generator with default flags for a few hundred methods.
 */
public final class ManyMethods {
    public static final String DEFAULT_PREFIX = "pyproftest.many.C";
    public static final int MIN_ROUNDS = 300;

    private static final List<Object> keep = new ArrayList<>();
    private static long sink;

    /** A class loader that defines the classes it is handed; drop it to unload them. */
    public static final class Loader extends ClassLoader {
        public Loader() {
            super(ManyMethods.class.getClassLoader());
        }

        public Class<?> define(String name, byte[] bytes) {
            return defineClass(name, bytes, 0, bytes.length);
        }
    }

    /**
     * A minimal class-file writer for one shape of class: public final, extends Object, static methods
     * m0..m(n-1) (long -> long) and drive() (calls them all once, returns the sum). Version 49.0.
     */
    public static final class ClassFile {
        private final ByteArrayOutputStream poolBytes = new ByteArrayOutputStream();
        private final DataOutputStream pool = new DataOutputStream(poolBytes);
        private final Map<String, Integer> entries = new HashMap<>();
        private int count = 1;

        private int add(String key, int slots, Writer w) throws IOException {
            Integer known = entries.get(key);
            if (known != null) {
                return known;
            }
            int index = count;
            w.write(pool);
            count += slots;
            entries.put(key, index);
            return index;
        }

        private interface Writer {
            void write(DataOutputStream out) throws IOException;
        }

        int utf8(String s) throws IOException {
            return add("U" + s, 1, out -> {
                out.writeByte(1);
                out.writeUTF(s);
            });
        }

        int classRef(String internalName) throws IOException {
            int name = utf8(internalName);
            return add("C" + internalName, 1, out -> {
                out.writeByte(7);
                out.writeShort(name);
            });
        }

        int integer(int value) throws IOException {
            return add("I" + value, 1, out -> {
                out.writeByte(3);
                out.writeInt(value);
            });
        }

        int methodRef(int owner, String name, String desc) throws IOException {
            int n = utf8(name);
            int d = utf8(desc);
            int nat = add("N" + name + desc, 1, out -> {
                out.writeByte(12);
                out.writeShort(n);
                out.writeShort(d);
            });
            return add("M" + owner + "." + name + desc, 1, out -> {
                out.writeByte(10);
                out.writeShort(owner);
                out.writeShort(nat);
            });
        }

        /** The bytes of class `binaryName` ("a.b.C") with `methods` methods m<i>(J)J and drive()J. */
        public static byte[] generate(String binaryName, int methods, int salt) {
            try {
                return new ClassFile().build(binaryName.replace('.', '/'), methods, salt);
            } catch (IOException e) {
                throw new IllegalStateException(e);
            }
        }

        private byte[] build(String internalName, int methods, int salt) throws IOException {
            int self = classRef(internalName);
            int superclass = classRef("java/lang/Object");
            int code = utf8("Code");
            int desc = utf8("(J)J");
            ByteArrayOutputStream methodBytes = new ByteArrayOutputStream();
            DataOutputStream m = new DataOutputStream(methodBytes);
            // m<i>(J)J: v = x ^ (salt + i); 4 rounds of v ^= v << 13; v ^= v >>> 7; return v.
            for (int i = 0; i < methods; i++) {
                int name = utf8("m" + i);
                int constant = integer(salt * 7919 + i);
                ByteArrayOutputStream body = new ByteArrayOutputStream();
                body.write(0x1e);                      // lload_0
                body.write(0x13);                      // ldc_w
                body.write(constant >> 8);
                body.write(constant);
                body.write(0x85);                      // i2l
                body.write(0x83);                      // lxor
                for (int r = 0; r < 4; r++) {
                    body.write(0x5c);                  // dup2
                    body.write(0x10);                  // bipush 13
                    body.write(13);
                    body.write(0x79);                  // lshl
                    body.write(0x83);                  // lxor
                    body.write(0x5c);                  // dup2
                    body.write(0x10);                  // bipush 7
                    body.write(7);
                    body.write(0x7d);                  // lushr
                    body.write(0x83);                  // lxor
                }
                body.write(0xad);                      // lreturn
                writeMethod(m, name, desc, code, 6, 2, body.toByteArray());
            }
            // drive()J: acc = 0; for each i: acc += m<i>(acc); return acc.
            ByteArrayOutputStream body = new ByteArrayOutputStream();
            body.write(0x09);                          // lconst_0
            for (int i = 0; i < methods; i++) {
                int ref = methodRef(self, "m" + i, "(J)J");
                body.write(0x5c);                      // dup2
                body.write(0xb8);                      // invokestatic
                body.write(ref >> 8);
                body.write(ref);
                body.write(0x61);                      // ladd
            }
            body.write(0xad);                          // lreturn
            writeMethod(m, utf8("drive"), utf8("()J"), code, 6, 0, body.toByteArray());

            ByteArrayOutputStream file = new ByteArrayOutputStream();
            DataOutputStream out = new DataOutputStream(file);
            out.writeInt(0xCAFEBABE);
            out.writeShort(0);
            out.writeShort(49);
            out.writeShort(count);
            pool.flush();
            out.write(poolBytes.toByteArray());
            out.writeShort(0x0031);                    // ACC_PUBLIC | ACC_FINAL | ACC_SUPER
            out.writeShort(self);
            out.writeShort(superclass);
            out.writeShort(0);                         // interfaces
            out.writeShort(0);                         // fields
            out.writeShort(methods + 1);
            m.flush();
            out.write(methodBytes.toByteArray());
            out.writeShort(0);                         // class attributes
            out.flush();
            return file.toByteArray();
        }

        private static void writeMethod(DataOutputStream m, int name, int desc, int code, int maxStack,
                                        int maxLocals, byte[] body) throws IOException {
            m.writeShort(0x0009);                      // ACC_PUBLIC | ACC_STATIC
            m.writeShort(name);
            m.writeShort(desc);
            m.writeShort(1);                           // one attribute: Code
            m.writeShort(code);
            m.writeInt(12 + body.length);
            m.writeShort(maxStack);
            m.writeShort(maxLocals);
            m.writeInt(body.length);
            m.write(body);
            m.writeShort(0);                           // exception table
            m.writeShort(0);                           // Code attributes
        }
    }

    /** drive() of each class, as a MethodHandle. */
    public static List<MethodHandle> defineAll(Loader loader, String prefix, int classes, int methods,
                                               int salt) throws ReflectiveOperationException {
        List<MethodHandle> drivers = new ArrayList<>(classes);
        for (int k = 0; k < classes; k++) {
            drivers.add(defineOne(loader, prefix + k, methods, salt + k));
        }
        return drivers;
    }

    /** Generates and defines class `name` in `loader`; returns its drive() as a MethodHandle. */
    public static MethodHandle defineOne(Loader loader, String name, int methods, int salt)
            throws ReflectiveOperationException {
        Class<?> c = loader.define(name, ClassFile.generate(name, methods, salt));
        return MethodHandles.publicLookup().findStatic(c, "drive", MethodType.methodType(long.class));
    }

    /** Calls each driver once per round until the JIT has been idle for `quietMillis` (after minRounds). */
    public static int driveUntilCompiled(List<MethodHandle> drivers, int minRounds, long quietMillis,
                                         long maxMillis, boolean report) throws Throwable {
        CompilationMXBean jit = ManagementFactory.getCompilationMXBean();
        long started = System.nanoTime();
        long lastTotal = -1;
        long lastChange = System.nanoTime();
        int round = 0;
        while (true) {
            for (MethodHandle h : drivers) {
                sink += (long) h.invokeExact();
            }
            round++;
            long now = System.nanoTime();
            if (report && round % 50 == 0) {
                System.out.printf("round %d %.2f%n", round, (now - started) / 1e9);
                System.out.flush();
            }
            long total = jit.getTotalCompilationTime();
            if (total != lastTotal || round == minRounds) {   // quiet counts from minRounds on
                lastTotal = total;
                lastChange = now;
            }
            if (round >= minRounds && (now - lastChange) / 1_000_000 >= quietMillis) {
                return round;
            }
            if ((now - started) / 1_000_000 >= maxMillis) {
                return round;
            }
        }
    }

    public static void main(String[] args) throws Throwable {
        int classes = args.length > 0 ? Integer.parseInt(args[0]) : 250;
        int methods = args.length > 1 ? Integer.parseInt(args[1]) : 100;
        String prefix = args.length > 2 ? args[2] : DEFAULT_PREFIX;
        long started = System.nanoTime();
        Loader loader = new Loader();
        List<MethodHandle> drivers = defineAll(loader, prefix, classes, methods, 1);
        keep.add(loader);
        keep.add(drivers);
        System.out.println("defined " + classes);
        System.out.flush();
        int rounds = driveUntilCompiled(drivers, MIN_ROUNDS, 1000, 300_000, true);
        System.out.printf("ready rounds=%d seconds=%.2f generated=%d%n", rounds,
                          (System.nanoTime() - started) / 1e9, classes * (methods + 1));
        System.out.flush();
        System.err.println("sink " + sink);
        while (true) {
            Thread.sleep(60_000);
        }
    }
}
