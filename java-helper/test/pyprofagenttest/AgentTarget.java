package pyprofagenttest;

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;

/**
 * The target of tests/integration/test_agent.py: a JVM that idles with known threads and compiles on
 * request, so a shared JVM gives every test a fresh, attributable event.
 *
 * GROUND TRUTH (once "ready" has been printed):
 *   Threads (Java name = Thread.getName(), comm = /proc/PID/task/TID/comm):
 *     "main"                               comm "java" (the launcher's thread is never renamed)
 *     "target-busy"                        comm "target-busy": 5 ms of arithmetic every 50 ms
 *     "target-ticker"                      comm "target-ticker": prints "tick N" every 200 ms
 *     "a-thread-name-longer-than-comm"     comm "a-thread-name-l" (15 bytes: TASK_COMM_LEN - 1)
 *     "renamed-self"                       comm "renamed-self" (started as "to-rename", renamed itself:
 *                                          HotSpot renames the OS thread of the current thread)
 *     "renamed-by-main"                    comm "named-at-start" (renamed by main: the OS name stays)
 *   stdout: "thread NAME JAVA_ID" for each of the five (after the renames), then "ready".
 *   stdin commands (one per line):
 *     "compile N": loads a fresh copy of AgentTarget$Hot through a new class loader and calls
 *         pyprofagenttest.AgentTarget$Hot.work(J)J 20000 times, so the JIT compiles it (a new compile
 *         id every time: each copy is a new class); then prints "compiled N".
 *     "gc": System.gc() (a full, stop-the-world collection, cause "System.gc()"); then prints "gc-done".
 *     "exit": exits 0.
 */
public final class AgentTarget {
    static volatile long sink;

    /** Copied into a new class loader per "compile" command. */
    public static final class Hot {
        public static long work(long x) {
            long h = x;
            for (int i = 0; i < 64; i++) {
                h = (h ^ (h >>> 29)) * 0x9E3779B97F4A7C15L + i;
            }
            return h;
        }
    }

    static final class FreshLoader extends ClassLoader {
        private final byte[] hot;

        FreshLoader(byte[] hot) {
            super("fresh", AgentTarget.class.getClassLoader());
            this.hot = hot;
        }

        @Override
        protected Class<?> loadClass(String name, boolean resolve) throws ClassNotFoundException {
            if (name.equals(Hot.class.getName())) {
                synchronized (getClassLoadingLock(name)) {
                    Class<?> c = findLoadedClass(name);
                    if (c == null) {
                        c = defineClass(name, hot, 0, hot.length);
                    }
                    return c;
                }
            }
            return super.loadClass(name, resolve);
        }
    }

    static Thread daemon(String name, Runnable r) {
        Thread t = new Thread(r, name);
        t.setDaemon(true);
        return t;
    }

    static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    public static void main(String[] args) throws Exception {
        byte[] hotBytes;
        try (InputStream in = AgentTarget.class.getResourceAsStream("AgentTarget$Hot.class")) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            in.transferTo(out);
            hotBytes = out.toByteArray();
        }
        CountDownLatch renamed = new CountDownLatch(1);
        List<Thread> threads = new ArrayList<>();
        threads.add(daemon("target-busy", () -> {
            long h = 1;
            while (true) {
                long end = System.nanoTime() + 5_000_000L;
                while (System.nanoTime() < end) {
                    h = Hot.work(h);
                }
                sink = h;
                sleep(45);
            }
        }));
        threads.add(daemon("target-ticker", () -> {
            for (long n = 1; ; n++) {
                sleep(200);
                System.out.println("tick " + n);
            }
        }));
        threads.add(daemon("a-thread-name-longer-than-comm", () -> sleep(Long.MAX_VALUE)));
        threads.add(daemon("to-rename", () -> {
            Thread.currentThread().setName("renamed-self");
            renamed.countDown();
            sleep(Long.MAX_VALUE);
        }));
        CountDownLatch byMainRunning = new CountDownLatch(1);
        Thread byMain = daemon("named-at-start", () -> {
            byMainRunning.countDown();   // its OS name is set by now (before run() is entered)
            sleep(Long.MAX_VALUE);
        });
        threads.add(byMain);
        for (Thread t : threads) {
            t.start();
        }
        renamed.await();
        byMainRunning.await();
        byMain.setName("renamed-by-main");
        synchronized (System.out) {
            for (Thread t : threads) {
                System.out.println("thread " + t.getName() + " " + t.getId());
            }
            System.out.println("ready");
        }
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] cmd = line.trim().split(" ");
            switch (cmd[0]) {
                case "compile": {
                    Class<?> c = new FreshLoader(hotBytes).loadClass(Hot.class.getName());
                    java.lang.reflect.Method work = c.getMethod("work", long.class);
                    long h = 7;
                    for (int i = 0; i < 20000; i++) {
                        h = (Long) work.invoke(null, h);
                    }
                    sink = h;
                    System.out.println("compiled " + (cmd.length > 1 ? cmd[1] : ""));
                    break;
                }
                case "gc":
                    System.gc();
                    System.out.println("gc-done");
                    break;
                case "exit":
                    System.exit(0);
                    break;
                default:
                    System.out.println("unknown " + line);
            }
        }
        // stdin closed: keep running (the tests kill the JVM)
        sleep(Long.MAX_VALUE);
    }
}
