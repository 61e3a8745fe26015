package pyprof.agent.impl;

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.net.InetAddress;
import java.net.Socket;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;

import javax.net.ServerSocketFactory;

import py4j.Gateway;
import py4j.GatewayConnection;
import py4j.GatewayServer;
import py4j.GatewayServerListener;
import py4j.Protocol;
import py4j.Py4JException;
import py4j.Py4JNetworkException;
import py4j.Py4JPythonClient;
import py4j.Py4JServerConnection;
import py4j.ReturnObject;
import py4j.commands.CallCommand;
import py4j.commands.Command;

/**
 * A py4j GatewayServer that listens on 127.0.0.1 only, demands the auth token before any command, and
 * then lets the client do exactly one thing: call the public methods of the entry point ({@code "t"}),
 * which return strings. Reflection, constructors, fields, arrays, the JVM view and server shutdown, which
 * py4j enables by default and which would hand a client the whole JVM, are not registered. Every thread
 * it starts is a named daemon thread ("pyprof-agent-...") in the agent's thread group.
 */
final class RestrictedGateway extends GatewayServer {
    static final String ENTRY_POINT_ID = "t";
    private static final int READ_TIMEOUT_MS = 0;        // a client may idle; unload closes its socket
    private static final int ACCEPT_TIMEOUT_MS = 0;      // py4j's "connectTimeout" is the accept() timeout:
                                                         // anything but 0 ends the accept loop when idle

    static final int AUTH_TIMEOUT_MS = 10_000;
    static final int MAX_CONNECTIONS = 32;

    private final String token;
    private final Set<String> allowedMethods;
    private final ThreadGroup group;
    private final AtomicInteger connections = new AtomicInteger();
    private final List<Thread> threads = Collections.synchronizedList(new ArrayList<>());
    private final CountDownLatch bound = new CountDownLatch(1);
    private volatile Throwable bindError;

    RestrictedGateway(Object entryPoint, Set<String> allowedMethods, String token, ThreadGroup group) {
        super(new Gateway(entryPoint, new NoCallbacks()), 0, AgentUtil.LOOPBACK, ACCEPT_TIMEOUT_MS,
                READ_TIMEOUT_MS, null, ServerSocketFactory.getDefault());
        this.token = token;
        this.allowedMethods = allowedMethods;
        this.group = group;
    }

    /** Binds 127.0.0.1:0 and serves on a named thread; returns the port or throws. */
    int startServing(long timeoutMs, Runnable onExit) throws Exception {
        InetAddress address = getAddress();
        if (!address.isLoopbackAddress() || !"127.0.0.1".equals(address.getHostAddress())) {
            throw new IllegalStateException("refusing to listen on " + address);
        }
        Thread t = new Thread(group, () -> {
            try {
                start(false);   // binds, then runs the accept loop on this thread until shutdown
            } catch (Throwable e) {
                bindError = e;
                bound.countDown();
            }
            onExit.run();
        }, "pyprof-agent-gateway");
        t.setDaemon(true);
        threads.add(t);
        t.start();
        if (!bound.await(timeoutMs, java.util.concurrent.TimeUnit.MILLISECONDS)) {
            throw new IllegalStateException("the gateway did not bind in " + timeoutMs + " ms");
        }
        if (bindError != null) {
            throw new IllegalStateException("the gateway cannot listen: " + AgentUtil.oneLine(bindError));
        }
        return getListeningPort();
    }

    @Override
    protected void startSocket() throws Py4JNetworkException {
        super.startSocket();
        bound.countDown();
    }

    @Override
    protected Py4JServerConnection createConnection(Gateway gateway, Socket socket) throws IOException {
        // Any local user can connect to 127.0.0.1: bound what a client without the token can hold.
        // It must authenticate and call within AUTH_TIMEOUT_MS (then the timeout is lifted), and at most
        // MAX_CONNECTIONS connections (threads) exist at once.
        if (aliveConnections() >= MAX_CONNECTIONS) {
            socket.close();
            throw new IOException("too many connections");
        }
        socket.setSoTimeout(AUTH_TIMEOUT_MS);
        RestrictedConnection c = new RestrictedConnection(gateway, socket, token, getListeners(),
                allowedMethods);
        Thread t = new Thread(group, c, "pyprof-agent-conn-" + connections.incrementAndGet());
        t.setDaemon(true);
        threads.add(t);
        t.start();
        return c;
    }

    private int aliveConnections() {
        int n = 0;
        synchronized (threads) {
            threads.removeIf(t -> !t.isAlive() && t.getName().startsWith("pyprof-agent-conn-"));
            for (Thread t : threads) {
                if (t.getName().startsWith("pyprof-agent-conn-")) {
                    n++;
                }
            }
        }
        return n;
    }

    /** Every thread this gateway started (the accept loop and one per connection), alive or not. */
    List<Thread> threads() {
        synchronized (threads) {
            return new ArrayList<>(threads);
        }
    }

    static final class RestrictedConnection extends GatewayConnection {
        private static final ThreadLocal<Set<String>> INIT_METHODS = new ThreadLocal<>();

        RestrictedConnection(Gateway gateway, Socket socket, String token, List<GatewayServerListener> listeners,
                             Set<String> allowed) throws IOException {
            super(gateway, socket, token, withAllowed(allowed), listeners);
        }

        private static List<Class<? extends Command>> withAllowed(Set<String> allowed) {
            INIT_METHODS.set(allowed);   // read back in initCommands, which the super constructor calls
            return null;
        }

        @Override
        protected void initCommands(Gateway gateway, List<Class<? extends Command>> commandsToInit) {
            // Called once by the super constructor with py4j's base commands: register only ours.
            Set<String> allowed = INIT_METHODS.get();
            INIT_METHODS.remove();
            EntryPointCall call = new EntryPointCall(allowed == null ? Set.of() : allowed);
            call.init(gateway, this);
            commands.put(call.getCommandName(), call);
        }

        @Override
        public void startConnection() {
            // the server starts the thread (named, in the agent's group): see createConnection
        }
    }

    /** The "c" command, only on the entry point and only for its allowed methods. */
    static final class EntryPointCall extends CallCommand {
        private final Set<String> allowed;

        EntryPointCall(Set<String> allowed) {
            this.allowed = allowed;
        }

        @Override
        public void execute(String commandName, BufferedReader reader, BufferedWriter writer)
                throws Py4JException, IOException {
            String target = reader.readLine();
            String method = reader.readLine();
            List<Object> args = getArguments(reader);
            connection.getSocket().setSoTimeout(0);   // authenticated (py4j checked the token first)
            String out;
            if (!ENTRY_POINT_ID.equals(target) || !allowed.contains(method)) {
                out = Protocol.getOutputErrorCommand("pyprof-agent: not allowed: " + method);
            } else {
                ReturnObject ro = invokeMethod(method, target, args);
                if (ro.isReference() || ro.isList() || ro.isMap() || ro.isSet() || ro.isArray()
                        || ro.isIterator() || ro.isError()) {
                    // only primitives and strings leave the agent; no object ids are handed out
                    out = Protocol.getOutputErrorCommand("pyprof-agent: call failed: " + method);
                } else {
                    out = Protocol.getOutputCommand(ro);
                }
            }
            writer.write(out);
            writer.flush();
        }
    }

    /** py4j wants a Python callback client; the agent never calls back into Python. */
    static final class NoCallbacks implements Py4JPythonClient {
        @Override
        public String sendCommand(String command) {
            throw new Py4JException("pyprof-agent: no callbacks");
        }

        @Override
        public String sendCommand(String command, boolean blocking) {
            throw new Py4JException("pyprof-agent: no callbacks");
        }

        @Override
        public void shutdown() {}

        @Override
        public Py4JPythonClient copyWith(InetAddress address, int port) {
            return this;
        }

        @Override
        public boolean isMemoryManagementEnabled() {
            return false;
        }

        @Override
        public int getPort() {
            return 0;
        }

        @Override
        public int getReadTimeout() {
            return 0;
        }

        @Override
        public InetAddress getAddress() {
            return AgentUtil.LOOPBACK;
        }

        @Override
        public Object getPythonServerEntryPoint(Gateway gateway, Class[] interfaces) {
            throw new Py4JException("pyprof-agent: no callbacks");
        }
    }
}
