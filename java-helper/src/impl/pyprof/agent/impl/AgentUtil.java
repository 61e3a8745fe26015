package pyprof.agent.impl;

import java.net.InetAddress;
import java.net.UnknownHostException;
import java.time.Duration;
import java.time.Instant;

final class AgentUtil {
    /** 127.0.0.1 itself: never "localhost" (which may resolve to ::1 or elsewhere) nor the wildcard. */
    static final InetAddress LOOPBACK = loopback();

    private AgentUtil() {}

    private static InetAddress loopback() {
        try {
            return InetAddress.getByAddress("localhost", new byte[] {127, 0, 0, 1});
        } catch (UnknownHostException e) {
            throw new IllegalStateException(e);
        }
    }

    static String oneLine(Throwable t) {
        Throwable root = t;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        String msg = root.getMessage();
        return (root.getClass().getSimpleName() + (msg == null ? "" : ": " + msg)).replace('\n', ' ');
    }

    static long epochNanos(Instant i) {
        return i == null ? 0 : i.getEpochSecond() * 1_000_000_000L + i.getNano();
    }

    static long nanos(Duration d) {
        return d == null ? 0 : d.toNanos();
    }
}
