package pyproftest;

import java.io.InputStream;
import java.io.OutputStream;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;

/**
 * One thread, "offcpu-main", cycling through four phases of known length: on CPU, then off CPU in
 * three known places (the wall-clock and off-CPU ground truth of `-e wall` / `-e offcpu`).
 *
 * Usage: OffCpu [SPIN_MS,SLEEP_MS,WAIT_MS,READ_MS] (default 20,20,20,20).
 *
 * GROUND TRUTH, per cycle of thread "offcpu-main":
 *   phaseSpin:  busy-waits SPIN_MS against System.nanoTime (on CPU; no syscall that blocks).
 *   phaseSleep: Thread.sleep(SLEEP_MS) (off CPU; JavaThread blocked, OSThread SLEEPING).
 *   phaseWait:  Object.wait(WAIT_MS) on a private monitor nobody notifies (off CPU; OBJECT_WAIT).
 *   phaseRead:  a blocking read of one byte from a loopback socket; the peer thread "offcpu-server"
 *               answers READ_MS after the request (off CPU in native code: JavaThread _thread_in_native
 *               on 11, where the JDK reads in socketRead0; blocked/parked in Net.poll on 13+).
 * Each phase's wall time is measured by the thread itself (System.nanoTime around the phase), and the
 * spin phase's CPU time too (ThreadMXBean): on a busy machine a preempted spinner waits on the run queue,
 * which is wall time off CPU.
 *
 * stdout: "ready" after one warm-up second, then every 100 ms "totals EPOCH_MS SPIN SLEEP WAIT READ CYCLES
 * SPIN_CPU" (the wall clock, then wall ns of each phase since ready, updated as each phase ends, cycles
 * completed, CPU ns of the spin phase), so a test takes the totals at the two ends of its profiling
 * window (a profile's start time and duration).
 */
public final class OffCpu implements Runnable {
    static volatile long sink;
    static final Object MONITOR = new Object();
    static final long[] totals = new long[6];   // spin, sleep, wait, read wall ns, cycles, spin cpu ns

    final long spinMs, sleepMs, waitMs, readMs;
    final InputStream in;
    final OutputStream out;

    OffCpu(long[] ms, Socket socket) throws Exception {
        spinMs = ms[0]; sleepMs = ms[1]; waitMs = ms[2]; readMs = ms[3];
        in = socket.getInputStream();
        out = socket.getOutputStream();
    }

    static long phaseSpin(long ms) {
        long end = System.nanoTime() + ms * 1_000_000L;
        long x = 1;
        while (System.nanoTime() < end) {
            for (int i = 0; i < 1000; i++) {
                x = x * 6364136223846793005L + 1442695040888963407L;
            }
        }
        sink = x;
        return x;
    }

    static void phaseSleep(long ms) throws InterruptedException {
        Thread.sleep(ms);
    }

    static void phaseWait(long ms) throws InterruptedException {
        synchronized (MONITOR) {
            MONITOR.wait(ms);   // nobody notifies: returns after ms
        }
    }

    static int phaseRead(InputStream in, OutputStream out) throws Exception {
        out.write(1);
        out.flush();
        return in.read();
    }

    static void add(int phase, long ns, int other, long value) {
        synchronized (totals) {
            totals[phase] += ns;
            totals[other] += value;
        }
    }

    @Override
    public void run() {
        ThreadMXBean mx = ManagementFactory.getThreadMXBean();
        try {
            while (true) {
                long c0 = mx.getCurrentThreadCpuTime();
                long t0 = System.nanoTime();
                phaseSpin(spinMs);
                long t1 = System.nanoTime();
                long c1 = mx.getCurrentThreadCpuTime();
                add(0, t1 - t0, 5, c1 - c0);
                phaseSleep(sleepMs);
                long t2 = System.nanoTime();
                add(1, t2 - t1, 4, 0);
                phaseWait(waitMs);
                long t3 = System.nanoTime();
                add(2, t3 - t2, 4, 0);
                phaseRead(in, out);
                long t4 = System.nanoTime();
                add(3, t4 - t3, 4, 1);
            }
        } catch (Exception e) {
            e.printStackTrace();
            System.exit(3);
        }
    }

    static void serve(ServerSocket server, long readMs) {
        try (Socket peer = server.accept()) {
            InputStream in = peer.getInputStream();
            OutputStream out = peer.getOutputStream();
            while (in.read() >= 0) {
                Thread.sleep(readMs);
                out.write(2);
                out.flush();
            }
        } catch (Exception e) {
            e.printStackTrace();
            System.exit(4);
        }
    }

    public static void main(String[] args) throws Exception {
        long[] ms = {20, 20, 20, 20};
        if (args.length > 0) {
            String[] parts = args[0].split(",");
            for (int i = 0; i < 4; i++) {
                ms[i] = Long.parseLong(parts[i].trim());
            }
        }
        ServerSocket server = new ServerSocket(0, 1, InetAddress.getLoopbackAddress());
        Thread peer = new Thread(() -> serve(server, ms[3]), "offcpu-server");
        peer.setDaemon(true);
        peer.start();
        Socket socket = new Socket(InetAddress.getLoopbackAddress(), server.getLocalPort());
        socket.setTcpNoDelay(true);
        Thread main = new Thread(new OffCpu(ms, socket), "offcpu-main");
        main.setDaemon(true);
        main.start();
        Thread.sleep(1000);
        synchronized (totals) {
            java.util.Arrays.fill(totals, 0);
        }
        System.out.println("ready");
        System.out.flush();
        while (true) {
            Thread.sleep(100);
            synchronized (totals) {
                System.out.println("totals " + System.currentTimeMillis() + " " + totals[0] + " " + totals[1] + " " + totals[2] + " " + totals[3]
                        + " " + totals[4] + " " + totals[5]);
            }
            System.out.flush();
        }
    }
}
