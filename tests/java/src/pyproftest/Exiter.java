package pyproftest;

/**
 * Burns CPU like Phases for a while, then calls System.exit(3): the target for "the JVM exits mid-run,
 * the profile is still written" and "record exits with the JVM's exit code".
 *
 * Usage: Exiter SECONDS [SHARES [CYCLE_MS]]; SHARES default "60,30,10", CYCLE_MS default 100.
 *
 * GROUND TRUTH:
 *   - stdout: "ready" after a 1 s warm-up, then "exit 3" after SECONDS more seconds of work; the process
 *     then exits with status 3 (System.exit(3) from the worker thread, so shutdown hooks run and the JVM
 *     tears down normally, not by a signal).
 *   - Between the two lines, one busy thread, Java name and /proc comm "exiter", runs exactly the cycles
 *     of Phases (see Phases.java): pyproftest.Phases.phaseA / phaseB / nativePhase (libphases.so) with
 *     the given shares (60/30/10 by default) <- pyproftest.Phases.runCycle <- pyproftest.Phases.loop
 *     <- pyproftest.Exiter.run (Exiter implements Runnable) <- java.lang.Thread.run (21+: also
 *     Thread.runWith). The warm-up is shorter than Phases' (1 s): phaseA and phaseB are C2 (tier 4)
 *     nmethods by "ready", but runCycle is still C1 (tier 3) code then, and stays so for about 100 s
 *     (checked with -XX:+PrintCompilation on JDK 17 and 25). The main thread only waits (join).
 */
public final class Exiter implements Runnable {
    public static final int EXIT_CODE = 3;

    private final long[] shares;
    private final long cycleNanos;
    private final long runNanos;

    Exiter(long[] shares, long cycleNanos, long runNanos) {
        this.shares = shares;
        this.cycleNanos = cycleNanos;
        this.runNanos = runNanos;
    }

    @Override
    public void run() {
        Phases.warmUp(shares, 1_000_000_000L);
        System.out.println("ready");
        System.out.flush();
        Phases.loop(shares, cycleNanos, System.nanoTime() + runNanos, true);
        System.out.println("exit " + EXIT_CODE);
        System.out.flush();
        System.exit(EXIT_CODE);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: Exiter SECONDS [SHARES [CYCLE_MS]]");
            System.exit(2);
        }
        long runNanos = (long) (Double.parseDouble(args[0]) * 1e9);
        long[] shares = Phases.parseShares(args.length > 1 ? args[1] : "60,30,10");
        long cycleNanos = (args.length > 2 ? Long.parseLong(args[2]) : 100) * 1_000_000L;
        Thread worker = new Thread(null, new Exiter(shares, cycleNanos, runNanos), "exiter");
        worker.start();
        worker.join();
    }
}
