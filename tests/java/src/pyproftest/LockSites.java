package pyproftest;

import java.util.concurrent.locks.ReentrantLock;

/**
 * Lock contention of known duration: a Java monitor and a j.u.c ReentrantLock, each held by one thread
 * while another waits for it.
 *
 * Usage: LockSites [HOLD_MONITOR_MS [HOLD_LOCK_MS]] (defaults 20 and 10).
 *
 * GROUND TRUTH (what `-e lock` must show once "ready" has been printed):
 *   monitor: thread "monitor-holder" loops { synchronized (MONITOR) { sleep(HOLD_MONITOR_MS) } sleep 1 ms };
 *            thread "monitor-waiter" loops { sleep 0.5 ms; waitOnMonitor() }: pyproftest.LockSites.waitOnMonitor
 *            enters synchronized (MONITOR) (an instance of pyproftest.LockSites$Monitor) and blocks
 *            until the holder leaves it: a contended monitor entry (ObjectMonitor::enter).
 *   park:    thread "lock-holder" loops { LOCK.lock(); sleep(HOLD_LOCK_MS); unlock; sleep 1 ms };
 *            thread "lock-waiter" loops { sleep 0.5 ms; waitOnLock() }: pyproftest.LockSites.waitOnLock
 *            calls LOCK.lock() and parks (Parker::park) until the holder unlocks.
 *   The waiters measure their own waiting (System.nanoTime around the acquisition, entries that waited
 *   >= 100 us counted) and the main thread prints the running totals about every 200 ms:
 *   "waited monitor_ns=N monitor_count=N park_ns=N park_count=N".
 *
 * stdout: "ready", then the "waited" lines.
 */
public final class LockSites {
    static final class Monitor {
        long entries;
    }

    static final Monitor MONITOR = new Monitor();
    static final ReentrantLock LOCK = new ReentrantLock();
    static volatile long monitorNs, monitorCount, parkNs, parkCount;
    static volatile boolean measuring;

    static void pause(long nanos) {
        try {
            Thread.sleep(nanos / 1_000_000, (int) (nanos % 1_000_000));
        } catch (InterruptedException e) {
            throw new RuntimeException(e);
        }
    }

    static void waitOnMonitor() {
        long start = System.nanoTime();
        synchronized (MONITOR) {
            long waited = System.nanoTime() - start;
            MONITOR.entries++;
            if (measuring && waited >= 100_000) {
                monitorNs += waited;
                monitorCount++;
            }
        }
    }

    static void waitOnLock() {
        long start = System.nanoTime();
        LOCK.lock();
        try {
            long waited = System.nanoTime() - start;
            if (measuring && waited >= 100_000) {
                parkNs += waited;
                parkCount++;
            }
        } finally {
            LOCK.unlock();
        }
    }

    static Thread start(String name, Runnable body) {
        Thread t = new Thread(() -> {
            while (true) {
                body.run();
            }
        }, name);
        t.setDaemon(true);
        t.start();
        return t;
    }

    public static void main(String[] args) throws Exception {
        long holdMonitorMs = args.length > 0 ? Long.parseLong(args[0]) : 20;
        long holdLockMs = args.length > 1 ? Long.parseLong(args[1]) : 10;
        start("monitor-holder", () -> {
            synchronized (MONITOR) {
                pause(holdMonitorMs * 1_000_000);
            }
            pause(1_000_000);
        });
        start("lock-holder", () -> {
            LOCK.lock();
            try {
                pause(holdLockMs * 1_000_000);
            } finally {
                LOCK.unlock();
            }
            pause(1_000_000);
        });
        start("monitor-waiter", () -> {
            pause(500_000);
            waitOnMonitor();
        });
        start("lock-waiter", () -> {
            pause(500_000);
            waitOnLock();
        });
        Thread.sleep(1000);
        measuring = true;
        System.out.println("ready");
        while (true) {
            Thread.sleep(200);
            System.out.println("waited monitor_ns=" + monitorNs + " monitor_count=" + monitorCount
                    + " park_ns=" + parkNs + " park_count=" + parkCount);
        }
    }
}
