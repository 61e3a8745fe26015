package pyproftest;

import java.util.concurrent.CountDownLatch;

/**
 * Four busy worker threads with known names, two of them renamed at run time: the target for thread
 * names and per-thread labels.
 *
 * Usage: Threads [SECONDS] (default: until killed).
 *
 * GROUND TRUTH (once "ready" has been printed):
 *
 *   Busy threads: exactly four, each burning CPU in pyproftest.Threads.spin(J)J (lines within
 *           [LINE:spin-begin, LINE:spin-end], work on LINE:spin-hot) <- pyproftest.Threads.run at
 *           LINE:run-call, the bottom Java frame (Threads extends Thread and overrides run(), so no
 *           java.lang.Thread frame is below it on any JDK). They share the CPU equally (each
 *           1/4 of the busy time, subject to the scheduler on fewer than 4 cores). The main thread sleeps.
 *   JIT: by "ready" spin is C2-compiled (tier 4, OSR and normal nmethods; the workers enter it 80 times
 *           a second in all) and nothing of this class is compiled or deoptimised afterwards
 *           (-XX:+PrintCompilation, JDK 17, 21, 25).
 *   Names, by start order (Java name = Thread.getName(); comm = /proc/PID/task/TID/comm):
 *     1. Java "worker-1",               comm "worker-1"
 *     2. Java "worker-2",               comm "worker-2"
 *     3. Java "renamed-worker",         comm "renamed-worker"  (started as "worker-3", renamed itself
 *                                        with Thread.currentThread().setName: HotSpot also renames the
 *                                        OS thread (pthread_setname_np) when a thread renames itself)
 *     4. Java "renamed-by-main-thread", comm "worker-4"        (started as "worker-4", renamed by the
 *                                        main thread with t.setName: HotSpot only sets the native name
 *                                        for the current thread, so the OS name stays "worker-4")
 *   comm is at most 15 bytes (TASK_COMM_LEN 16 with the NUL): all four fit; the Java name of worker 4
 *   (22 chars) would be cut to "renamed-by-main" if it were ever copied into comm.
 *   The main thread: Java name "main", comm "java" (HotSpot does not rename the launcher's thread).
 *
 * Line markers ("// LINE:<name>" ending a line) are resolved by marker_line() in
 * tests/integration/test_workloads.py.
 *
 * stdout: "names worker-1,worker-2,renamed-worker,renamed-by-main-thread" (the Java names, read back with
 * getName() after both renames), then "ready".
 */
public final class Threads extends Thread {
    static final String SELF_RENAMED = "renamed-worker";
    static final String MAIN_RENAMED = "renamed-by-main-thread";
    static volatile long sink;

    private final int index;
    private final CountDownLatch started;
    private final CountDownLatch selfRenamed;

    Threads(int index, CountDownLatch started, CountDownLatch selfRenamed) {
        super("worker-" + index);
        this.index = index;
        this.started = started;
        this.selfRenamed = selfRenamed;
        setDaemon(true);
    }

    /** Integer mixing until System.nanoTime() reaches deadline. */
    static long spin(long deadline) {                                                 // LINE:spin-begin
        long h = deadline;
        while (System.nanoTime() < deadline) {
            for (int i = 0; i < 1024; i++) {
                h = (h ^ (h >>> 31)) * 0x9E3779B97F4A7C15L + i;                         // LINE:spin-hot
            }
        }
        return h;
    }                                                                                 // LINE:spin-end

    @Override
    public void run() {
        // Chunks of 50 ms: run() is called once and loops 20 times a second, so it stays interpreted
        // and spin is never inlined into it. The 0.5 s warm-up is made of such chunks too, so that the
        // compiled spin has seen its loop exit taken (no unstable_if deoptimisation after "ready").
        long h = 0;
        for (int i = 0; i < 10; i++) {
            h += spin(System.nanoTime() + 50_000_000L);
        }
        started.countDown();
        if (index == 3) {
            Thread.currentThread().setName(SELF_RENAMED);
            selfRenamed.countDown();
        }
        while (true) {
            h += spin(System.nanoTime() + 50_000_000L);                                 // LINE:run-call
            sink = h;
        }
    }

    public static void main(String[] args) throws Exception {
        double seconds = args.length > 0 ? Double.parseDouble(args[0]) : Double.POSITIVE_INFINITY;
        CountDownLatch started = new CountDownLatch(4);
        CountDownLatch selfRenamed = new CountDownLatch(1);
        Threads[] workers = new Threads[4];
        for (int i = 0; i < 4; i++) {
            workers[i] = new Threads(i + 1, started, selfRenamed);
            workers[i].start();
        }
        started.await();
        selfRenamed.await();
        workers[3].setName(MAIN_RENAMED);
        StringBuilder names = new StringBuilder("names ");
        for (int i = 0; i < 4; i++) {
            names.append(i == 0 ? "" : ",").append(workers[i].getName());
        }
        System.out.println(names);
        System.out.println("ready");
        System.out.flush();
        if (Double.isInfinite(seconds)) {
            Thread.sleep(Long.MAX_VALUE);
        } else {
            Thread.sleep((long) (seconds * 1000));
        }
    }
}
