package pyproftest;

import java.util.ArrayList;
import java.util.concurrent.locks.LockSupport;

/**
 * The benchmark target of bench/alloc.py: one thread doing work that hits an event's probes as often as
 * real applications do, reporting its own throughput.
 *
 * Usage: EventThroughput MODE, MODE one of
 *   alloc  allocation-heavy: each unit builds a small object graph (an ArrayList of 32 Strings of
 *          ~24 chars, ~3 KB) and keeps the last 4096 units alive (GB/s on one core: TLAB refills and some
 *          promotion, as a busy service allocates)
 *   young  the same units, only the last 16 kept: everything dies young (no promotion, no old-gen work),
 *          so the throughput is steadier on a shared machine than `alloc`'s
 *   park   each unit unparks its own thread and parks: Parker::park returns at once (the permit is there),
 *          so a unit is one entry and one return probe of `-e lock` plus a few hundred ns of work
 *
 * stdout: "ready", then "ops <n> <nanos>" every 250 ms.
 */
public final class EventThroughput {
    static final Object[] KEEP = new Object[4096];
    static int next;
    static int keepMask = KEEP.length - 1;

    static void allocUnit(int seed) {
        ArrayList<String> list = new ArrayList<>();
        for (int i = 0; i < 32; i++) {
            list.add("value-" + seed + "-" + i + "-abcdefghij");
        }
        KEEP[next] = list;
        next = (next + 1) & keepMask;
    }

    static void parkUnit() {
        LockSupport.unpark(Thread.currentThread());
        LockSupport.park();
    }

    public static void main(String[] args) {
        boolean park = args.length > 0 && args[0].equals("park");
        if (args.length > 0 && args[0].equals("young")) {
            keepMask = 15;
        }
        for (int i = 0; i < 50_000; i++) {   // warm-up: compiled before "ready"
            if (park) {
                parkUnit();
            } else {
                allocUnit(i);
            }
        }
        System.out.println("ready");
        System.out.flush();
        long windowStart = System.nanoTime();
        long ops = 0;
        int seed = 0;
        while (true) {
            for (int i = 0; i < 64; i++) {
                if (park) {
                    parkUnit();
                } else {
                    allocUnit(seed++);
                }
            }
            ops += 64;
            long now = System.nanoTime();
            if (now - windowStart >= 250_000_000L) {
                System.out.println("ops " + ops + " " + (now - windowStart));
                ops = 0;
                windowStart = now;
            }
        }
    }
}
