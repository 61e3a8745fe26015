package pyproftest;

/**
 * Two allocation sites with known shares of the allocated bytes, on one thread "alloc-main".
 *
 * Usage: AllocSites [SECONDS]: run until killed (or SECONDS after "ready").
 *
 * GROUND TRUTH (what `-e alloc` must show once "ready" has been printed):
 *   Each round allocates exactly 6 MiB of byte[] and 2 MiB of long[]:
 *   A: pyproftest.AllocSites.allocLarge(): one byte[6 MiB - 16] (16-byte header: 6291456 bytes), 75 %
 *      of the bytes, 1 object a round. Always outside a TLAB: G1 makes it a humongous object (its
 *      regions are at most 32 MiB, a TLAB at most half of one, and 6 MiB is more than half a region
 *      up to 8 MiB regions, i.e. heaps below 16 GiB); on other collectors it exceeds the TLAB.
 *   B: pyproftest.AllocSites.allocSmall(): 2048 x long[126] (16 + 1008 = 1024 bytes each), 25 % of
 *      the bytes, 2048 objects a round (in TLABs, which hold nothing else).
 *   Every object is stored into a ring of references, so no compiler may eliminate the allocation
 *   (escape analysis) and each survives a while. Nothing else on the thread allocates after "ready".
 *   (Sizes assume compressed class pointers, the default on every tested JDK.)
 *
 * stdout: "ready", then "rounds N" about once a second.
 */
public final class AllocSites implements Runnable {
    static final int LARGE = 6 * 1024 * 1024 - 16;
    static final int SMALL = 126;
    static final Object[] RING = new Object[4096];
    static int next;
    static volatile long rounds;

    static void keep(Object o) {
        RING[next] = o;
        next = (next + 1) & (RING.length - 1);
    }

    static void allocLarge() {
        keep(new byte[LARGE]);
    }

    static void allocSmall() {
        for (int i = 0; i < 2048; i++) {
            keep(new long[SMALL]);
        }
    }

    static void round() {
        allocLarge();
        allocSmall();
    }

    @Override
    public void run() {
        while (true) {
            round();
            rounds++;
        }
    }

    public static void main(String[] args) throws Exception {
        long seconds = args.length > 0 ? Long.parseLong(args[0]) : Long.MAX_VALUE / 2000;
        for (int i = 0; i < 2_000; i++) {   // warm-up: compiled before "ready"
            round();
        }
        Thread t = new Thread(new AllocSites(), "alloc-main");
        t.setDaemon(true);
        t.start();
        System.out.println("ready");
        long end = System.currentTimeMillis() + seconds * 1000;
        while (System.currentTimeMillis() < end) {
            Thread.sleep(1000);
            System.out.println("rounds " + rounds);
        }
    }
}
