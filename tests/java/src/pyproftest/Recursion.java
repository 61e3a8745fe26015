package pyproftest;

import java.util.zip.Deflater;

/**
 * Recursive methods that C2 compiles and inlines into themselves, on threads that also run other code
 * between recursions (so the stack memory below a recursion holds stale return addresses of that other
 * code): the target for "a recursive compiled method never loses its caller, nor gets a wrong one".
 *
 * Usage: Recursion [THREADS [SECONDS]]   (defaults 2, until killed)
 *
 * GROUND TRUTH (once "ready" has been printed): THREADS threads "rec-N" (Java name = /proc comm) loop in
 * pyproftest.Recursion.run over three phases, each a few milliseconds:
 *   fib:     Recursion.fibPhase -> Recursion.fib(FIB_N) (LINE:fib-call), fib recursing into itself twice
 *            (LINE:fib-recurse): a static method that C2 compiles and inlines into itself
 *            (MaxRecursiveInlineLevel), so a compiled fib frame holds `fib [inlined]` scopes and calls
 *            fib's own nmethod, at most FIB_N frames deep;
 *   tree:    Recursion.treePhase -> Node.sum (LINE:tree-call), a recursion through an interface call on
 *            three implementations (Leaf, Pair, Triple: megamorphic, so an itable stub sits between the
 *            compiled frames, or C2 inlines sum through a type switch);
 *   deflate: Recursion.deflatePhase -> java.util.zip.Deflater (setInput, finish, deflate, end;
 *            LINE:deflate-call): JNI calls into zlib, whose frames leave their return addresses on the
 *            stack below where the recursions run.
 * The main thread sleeps. stdout: "ready" once the threads run.
 *
 * Who calls whom (any other caller of these frames is a wrongly joined stack):
 *   Recursion.fib       <- Recursion.fib, Recursion.fibPhase
 *   Recursion.fibPhase  <- Recursion.run
 *   Recursion$Leaf.sum, Recursion$Pair.sum, Recursion$Triple.sum <- one of those three, Recursion.treePhase
 *   Recursion.treePhase, Recursion.deflatePhase <- Recursion.run
 *   Recursion.run       <- java.lang.Thread.run (JDK 21+: Thread.runWith)
 */
public final class Recursion extends Thread {
    static final int FIB_N = 24;
    static final int TREE_DEPTH = 9;
    static volatile long sink;

    Recursion(String name) {
        super(name);
        setDaemon(true);
    }

    public static void main(String[] args) throws Exception {
        int threads = args.length > 0 ? Integer.parseInt(args[0]) : 2;
        double seconds = args.length > 1 ? Double.parseDouble(args[1]) : -1;
        for (int i = 0; i < threads; i++) {
            new Recursion("rec-" + i).start();
        }
        System.out.println("ready");
        System.out.flush();
        long end = seconds > 0 ? System.nanoTime() + (long) (seconds * 1e9) : Long.MAX_VALUE;
        while (System.nanoTime() < end) {
            Thread.sleep(200);
        }
        System.exit(0);
    }

    @Override
    public void run() {
        Node tree = build(TREE_DEPTH, 0);
        byte[] text = text(16 * 1024);
        byte[] out = new byte[32 * 1024];
        long acc = 0;
        while (true) {
            acc += fibPhase();
            acc += treePhase(tree);
            acc += deflatePhase(text, out);
            sink = acc;
        }
    }

    static long fibPhase() {
        long s = 0;
        for (int i = 0; i < 4; i++) {
            s += fib(FIB_N - (i & 1)); // LINE:fib-call
        }
        return s;
    }

    static int fib(int n) {
        return n < 2 ? n : fib(n - 1) + fib(n - 2); // LINE:fib-recurse
    }

    static long treePhase(Node tree) {
        long s = 0;
        for (int i = 0; i < 8; i++) {
            s += tree.sum(i); // LINE:tree-call
        }
        return s;
    }

    static long deflatePhase(byte[] text, byte[] out) {
        Deflater d = new Deflater(6);
        try {
            d.setInput(text);
            d.finish();
            long n = 0;
            while (!d.finished()) {
                n += d.deflate(out); // LINE:deflate-call
            }
            return n;
        } finally {
            d.end();
        }
    }

    static byte[] text(int size) {
        StringBuilder sb = new StringBuilder();
        long h = 1;
        while (sb.length() < size) {
            h = h * 6364136223846793005L + 1442695040888963407L;
            sb.append("word").append((h >>> 40) % 300).append(' ');
        }
        return sb.substring(0, size).getBytes(java.nio.charset.StandardCharsets.US_ASCII);
    }

    static Node build(int depth, int seed) {
        if (depth == 0) {
            return new Leaf(seed);
        }
        switch (seed % 3) {
            case 0:
                return new Pair(build(depth - 1, seed + 1), build(depth - 1, seed + 2));
            case 1:
                return new Triple(build(depth - 1, seed + 1), build(depth - 2 < 0 ? 0 : depth - 2, seed + 2),
                                  new Leaf(seed));
            default:
                return new Pair(new Leaf(seed), build(depth - 1, seed + 1));
        }
    }

    interface Node {
        long sum(int salt);
    }

    static final class Leaf implements Node {
        final int v;

        Leaf(int v) {
            this.v = v;
        }

        @Override
        public long sum(int salt) {
            return (long) v * 31 + salt;
        }
    }

    static final class Pair implements Node {
        final Node a, b;

        Pair(Node a, Node b) {
            this.a = a;
            this.b = b;
        }

        @Override
        public long sum(int salt) {
            return a.sum(salt + 1) ^ b.sum(salt); // LINE:pair-recurse
        }
    }

    static final class Triple implements Node {
        final Node a, b, c;

        Triple(Node a, Node b, Node c) {
            this.a = a;
            this.b = b;
            this.c = c;
        }

        @Override
        public long sum(int salt) {
            return a.sum(salt) + b.sum(salt + 1) * 3 + c.sum(salt + 2); // LINE:triple-recurse
        }
    }
}
