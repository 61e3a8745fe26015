package pyproftest;

import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.locks.LockSupport;

/**
 * Virtual threads burning CPU with a stack that tells which thread they are: the target for the
 * `virtual_thread` label (JDK 21+). Compiled with --release 11 like every workload, so the JDK 21 API
 * (Thread.ofVirtual()) is called through reflection; on JDK 11 and 17 the same threads are platform
 * threads.
 *
 * Usage: VirtualThreads [NAMED] [UNNAMED] [MORE] (defaults 6, 2 and 0).
 *
 * GROUND TRUTH (once "ready" has been printed):
 *
 *   Busy threads: NAMED virtual threads named "vt-1" .. "vt-NAMED" and UNNAMED virtual threads without a
 *           name (Thread.getName() is ""), plus one platform thread "platform-burner"; NAMED + UNNAMED
 *           at most 8. Thread number K (vt-K for the named ones, NAMED+1 .. NAMED+UNNAMED for the unnamed
 *           ones in start order; 0 for "platform-burner") burns CPU in pyproftest.VirtualThreads.spin
 *           called by pyproftest.VirtualThreads.workK (K = 0..8), and no other thread ever runs workK:
 *           the stack of a sample in spin says which thread it is.
 *   MORE: that many more named virtual threads, "vt-" + (NAMED+UNNAMED+1) upwards, all under work9
 *           (listed in "threads" with K = 9): many virtual threads sharing a few carriers.
 *   Remounting: each virtual thread parks for 50 us (LockSupport.parkNanos) after every ~0.2 ms of
 *           spinning, so the carriers (ForkJoinPool-1-worker-N, as many as cores) switch between virtual
 *           threads all the time; a virtual thread resumes on any carrier.
 *   The main thread sleeps.
 *
 * stdout: "mode virtual" (JDK 21+) or "mode platform" (JDK 11, 17: the same threads, as platform threads
 * with the same names), then "threads " + comma-separated "label:K" for every busy thread, where the
 * label of an unnamed virtual thread is "#" + Thread.getId(), then "ready".
 */
public final class VirtualThreads {
    static volatile long sink;

    /** Integer mixing until System.nanoTime() reaches deadline. */
    static long spin(long deadline) {
        long h = deadline;
        while (System.nanoTime() < deadline) {
            for (int i = 0; i < 200; i++) {
                h ^= h << 13;
                h ^= h >>> 7;
                h ^= h << 17;
            }
        }
        return h;
    }

    // work0 .. work8: one method per busy thread, so that a stack tells which thread it is (work9: MORE)
    static long work0(long nanos) {
        return spin(System.nanoTime() + nanos) + 0;
    }

    static long work1(long nanos) {
        return spin(System.nanoTime() + nanos) + 1;
    }

    static long work2(long nanos) {
        return spin(System.nanoTime() + nanos) + 2;
    }

    static long work3(long nanos) {
        return spin(System.nanoTime() + nanos) + 3;
    }

    static long work4(long nanos) {
        return spin(System.nanoTime() + nanos) + 4;
    }

    static long work5(long nanos) {
        return spin(System.nanoTime() + nanos) + 5;
    }

    static long work6(long nanos) {
        return spin(System.nanoTime() + nanos) + 6;
    }

    static long work7(long nanos) {
        return spin(System.nanoTime() + nanos) + 7;
    }

    static long work8(long nanos) {
        return spin(System.nanoTime() + nanos) + 8;
    }

    static long work9(long nanos) {
        return spin(System.nanoTime() + nanos) + 9;
    }

    static long work(int k, long nanos) {
        switch (k) {
            case 0: return work0(nanos);
            case 1: return work1(nanos);
            case 2: return work2(nanos);
            case 3: return work3(nanos);
            case 4: return work4(nanos);
            case 5: return work5(nanos);
            case 6: return work6(nanos);
            case 7: return work7(nanos);
            case 8: return work8(nanos);
            default: return work9(nanos);
        }
    }

    static Runnable burner(int k, boolean yields) {
        return () -> {
            while (true) {
                sink += work(k, 200_000);
                if (yields) {
                    // a virtual thread unmounts here and resumes on any carrier. Not Thread.yield(): on JDK 25
                    // a yielding virtual thread got its carrier back at once, and the others starved.
                    LockSupport.parkNanos(50_000);
                }
            }
        };
    }

    /** Thread.ofVirtual()[.name(name)].start(task) through reflection, or null before JDK 21. */
    static Thread startVirtual(String name, Runnable task) throws Exception {
        Method ofVirtual;
        try {
            ofVirtual = Thread.class.getMethod("ofVirtual");
        } catch (NoSuchMethodException e) {
            return null;
        }
        Object builder = ofVirtual.invoke(null);
        Class<?> builderType = Class.forName("java.lang.Thread$Builder$OfVirtual");
        if (name != null) {
            builder = builderType.getMethod("name", String.class).invoke(builder, name);
        }
        return (Thread) builderType.getMethod("start", Runnable.class).invoke(builder, task);
    }

    public static void main(String[] args) throws Exception {
        int named = args.length > 0 ? Integer.parseInt(args[0]) : 6;
        int unnamed = args.length > 1 ? Integer.parseInt(args[1]) : 2;
        int more = args.length > 2 ? Integer.parseInt(args[2]) : 0;
        if (named + unnamed > 8) {
            throw new IllegalArgumentException("at most 8 busy virtual threads (work1 .. work8)");
        }
        boolean virtual = startVirtual(null, () -> { }) != null;
        System.out.println("mode " + (virtual ? "virtual" : "platform"));
        List<String> threads = new ArrayList<>();
        for (int k = 1; k <= named + unnamed; k++) {
            String name = k <= named ? "vt-" + k : null;
            Thread t = virtual ? startVirtual(name, burner(k, true)) : null;
            if (t == null) {
                t = new Thread(burner(k, true), name != null ? name : "unnamed-" + k);
                t.setDaemon(true);
                t.start();
            }
            threads.add((name != null ? name : virtual ? "#" + t.getId() : t.getName()) + ":" + k);
        }
        for (int i = 1; i <= more; i++) {
            String name = "vt-" + (named + unnamed + i);
            Thread t = virtual ? startVirtual(name, burner(9, true)) : null;
            if (t == null) {
                t = new Thread(burner(9, true), name);
                t.setDaemon(true);
                t.start();
            }
            threads.add(name + ":9");
        }
        Thread platform = new Thread(burner(0, false), "platform-burner");
        platform.setDaemon(true);
        platform.start();
        threads.add("platform-burner:0");
        System.out.println("threads " + String.join(",", threads));
        System.out.println("ready");
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
