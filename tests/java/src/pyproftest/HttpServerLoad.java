package pyproftest;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A real multithreaded HTTP server under load, all on loopback: the JDK's com.sun.net.httpserver with a
 * fixed thread pool ("http-worker-N"), driven by client threads ("load-N") that loop over four request
 * paths of different stack depth with HttpURLConnection. Deep, many-threaded server stacks (sockets,
 * selectors, the HTTP server's dispatcher, JNI socket code, locks) instead of a single hot loop: what the
 * cost and completeness of pyprof are judged on.
 *
 * Usage: HttpServerLoad [WORKERS [CLIENTS [SECONDS [IDLE_THREADS]]]]   (defaults 4, 4, until killed, 0)
 *   IDLE_THREADS extra threads ("idle-N") that only sleep: a server's parked pools, for the idle-thread
 *   cost of a profiler.
 *
 * Paths (the handler's work is fixed per request, so the split between paths follows the request mix):
 *   /shallow        a small computation right in the handler
 *   /deep           the same computation under a recursion of DEPTH frames through three classes
 *   /json           builds and parses a JSON-like document (String/StringBuilder, allocation)
 *   /sleep          sleeps 2 ms (off-CPU time in a handler)
 * Clients request them in the ratio 1 : 2 : 1 : 1.
 *
 * stdout: "ready port=<port>" once the server answers, then "requests <total>" every second.
 */
public final class HttpServerLoad {
    static final int DEPTH = 40;
    static final String[] MIX = {"/shallow", "/deep", "/deep", "/json", "/sleep"};
    static final AtomicLong served = new AtomicLong();
    static volatile long sink;

    public static void main(String[] args) throws Exception {
        int workers = args.length > 0 ? Integer.parseInt(args[0]) : 4;
        int clients = args.length > 1 ? Integer.parseInt(args[1]) : 4;
        double seconds = args.length > 2 ? Double.parseDouble(args[2]) : -1;
        int idle = args.length > 3 ? Integer.parseInt(args[3]) : 0;

        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 256);
        server.createContext("/shallow", ex -> reply(ex, Work.compute(2_000)));
        server.createContext("/deep", ex -> reply(ex, Layers.down(DEPTH)));
        server.createContext("/json", ex -> reply(ex, Json.roundTrip(40)));
        server.createContext("/sleep", ex -> reply(ex, sleepy()));
        ExecutorService pool = Executors.newFixedThreadPool(workers, named("http-worker-"));
        server.setExecutor(pool);
        server.start();
        int port = server.getAddress().getPort();

        CountDownLatch parked = new CountDownLatch(1);
        for (int i = 0; i < idle; i++) {
            Thread t = new Thread(() -> {
                try {
                    parked.await();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }, "idle-" + i);
            t.setDaemon(true);
            t.start();
        }

        List<Thread> loaders = new ArrayList<>();
        for (int i = 0; i < clients; i++) {
            final int offset = i;
            Thread t = new Thread(() -> load(port, offset), "load-" + i);
            t.setDaemon(true);
            loaders.add(t);
        }
        request(port, "/shallow");   // the server answers: ready
        System.out.println("ready port=" + port);
        System.out.flush();
        for (Thread t : loaders) {
            t.start();
        }
        long end = seconds > 0 ? System.nanoTime() + (long) (seconds * 1e9) : Long.MAX_VALUE;
        while (System.nanoTime() < end) {
            Thread.sleep(1000);
            System.out.println("requests " + served.get());
            System.out.flush();
        }
        server.stop(0);
        pool.shutdownNow();
        System.exit(0);
    }

    static ThreadFactory named(String prefix) {
        AtomicInteger n = new AtomicInteger();
        return r -> {
            Thread t = new Thread(r, prefix + n.incrementAndGet());
            t.setDaemon(true);
            return t;
        };
    }

    static void load(int port, int offset) {
        int i = offset;
        while (true) {
            String path = MIX[i++ % MIX.length];
            try {
                request(port, path);
            } catch (IOException e) {
                // the server is shutting down
                return;
            }
        }
    }

    static String request(int port, String path) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL("http://127.0.0.1:" + port + path).openConnection();
        c.setConnectTimeout(5000);
        c.setReadTimeout(5000);
        try (InputStream in = c.getInputStream()) {
            byte[] body = in.readAllBytes();
            return new String(body, StandardCharsets.UTF_8);
        }
    }

    static void reply(HttpExchange ex, long value) throws IOException {
        byte[] body = Long.toString(value).getBytes(StandardCharsets.UTF_8);
        ex.sendResponseHeaders(200, body.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(body);
        }
        served.incrementAndGet();
    }

    static long sleepy() {
        try {
            Thread.sleep(2);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return 1;
    }

    /** A fixed amount of integer work. */
    static final class Work {
        static long compute(int rounds) {
            long h = rounds;
            for (int i = 0; i < rounds; i++) {
                h = h * 6364136223846793005L + 1442695040888963407L;
                h ^= h >>> 29;
            }
            sink = h;
            return h;
        }
    }

    /** A recursion through three classes, DEPTH frames deep, with the work at the bottom. */
    static final class Layers {
        static long down(int depth) {
            return depth <= 0 ? Work.compute(2_000) : Middle.step(depth - 1) + 1;
        }
    }

    static final class Middle {
        static long step(int depth) {
            return depth <= 0 ? Work.compute(2_000) : Bottom.step(depth - 1) + 1;
        }
    }

    static final class Bottom {
        static long step(int depth) {
            return depth <= 0 ? Work.compute(2_000) : Layers.down(depth - 1) + 1;
        }
    }

    /** Builds a small document and parses the numbers back out of it. */
    static final class Json {
        static long roundTrip(int fields) {
            StringBuilder sb = new StringBuilder("{");
            for (int i = 0; i < fields; i++) {
                if (i > 0) {
                    sb.append(',');
                }
                sb.append("\"field").append(i).append("\":").append(i * 31L);
            }
            sb.append('}');
            String doc = sb.toString();
            long sum = 0;
            for (String part : doc.substring(1, doc.length() - 1).split(",")) {
                sum += Long.parseLong(part.substring(part.indexOf(':') + 1));
            }
            return sum;
        }
    }
}
