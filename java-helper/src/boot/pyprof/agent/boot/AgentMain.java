package pyprof.agent.boot;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.Instrumentation;
import java.lang.reflect.Constructor;
import java.net.URL;
import java.nio.file.Path;
import java.security.CodeSource;
import java.security.ProtectionDomain;
import java.util.Enumeration;
import java.util.HashMap;
import java.util.Map;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;

/**
 * The only class of the pyprof agent the JVM's class path sees (Premain-Class and Agent-Class).
 *
 * <p>Everything else (the agent proper and py4j) is stored in the jar under {@code inner/}, out of the
 * class path's reach, and defined by a fresh {@link InnerLoader} whose parent is the platform class
 * loader. So the agent's py4j never clashes with a py4j (or anything else) the application ships, and a
 * second load after an unload starts from fresh classes with fresh static state: the old loader and its
 * classes become unreachable once the agent has stopped.
 *
 * <p>This class keeps exactly one thing: the running agent (an {@link AutoCloseable}), guarded by a lock,
 * so a second {@code agentmain} while one runs is a no-op and after an unload it starts a new one.
 */
public final class AgentMain {
    private static final Object LOCK = new Object();
    private static Object running;     // the running agent, or null; guarded by LOCK
    private static final String IMPL = "pyprof.agent.impl.Agent";

    private AgentMain() {}

    /**
     * -javaagent:pyprof-agent.jar[=options]. Starts the agent on a thread of its own ("pyprof-agent-start",
     * a daemon that ends once the agent runs): JFR and the MBean server take a second or so to come up,
     * and the application's main() should not wait for that. Never throws (that would abort the JVM).
     */
    public static void premain(String args, Instrumentation inst) {
        try {
            Thread t = new Thread(() -> {
                try {
                    start(args, inst, false);
                } catch (Throwable e) {
                    System.err.println("pyprof-agent: not started: " + oneLine(e));
                }
            }, "pyprof-agent-start");
            t.setDaemon(true);
            t.start();
        } catch (Throwable t) {
            System.err.println("pyprof-agent: not started: " + oneLine(t));
        }
    }

    /** jcmd PID JVMTI.agent_load pyprof-agent.jar[=options] (or the Attach API). */
    public static void agentmain(String args, Instrumentation inst) throws Exception {
        try {
            start(args, inst, true);
        } catch (Throwable t) {
            System.err.println("pyprof-agent: not started: " + oneLine(t));
            throw new IllegalStateException("pyprof-agent: not started: " + oneLine(t), t);
        }
    }

    private static void start(String args, Instrumentation inst, boolean dynamic) throws Exception {
        synchronized (LOCK) {
            if (running != null) {
                return;   // already running: loading twice is harmless
            }
            InnerLoader loader = InnerLoader.fromJar(AgentMain.class.getProtectionDomain());
            Class<?> impl = Class.forName(IMPL, true, loader);
            Constructor<?> ctor = impl.getConstructor(String.class, Instrumentation.class, boolean.class,
                    Runnable.class);
            Object[] self = new Object[1];
            Runnable onStopped = () -> stopped(self[0]);
            Object agent = ctor.newInstance(args == null ? "" : args, inst, dynamic, onStopped);
            self[0] = agent;
            running = agent;
        }
    }

    /** Called by the agent once it has stopped every thread it started (unload). */
    private static void stopped(Object agent) {
        synchronized (LOCK) {
            if (running == agent) {
                running = null;
            }
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

    /** Defines classes from the agent jar's inner/ entries; parent: the platform class loader. */
    static final class InnerLoader extends ClassLoader {
        private static final String PREFIX = "inner/";
        private final Map<String, byte[]> entries;
        private final ProtectionDomain domain;

        static {
            registerAsParallelCapable();
        }

        private InnerLoader(Map<String, byte[]> entries, ProtectionDomain domain) {
            super("pyprof-agent", ClassLoader.getPlatformClassLoader());
            this.entries = entries;
            this.domain = domain;
        }

        static InnerLoader fromJar(ProtectionDomain domain) throws IOException {
            CodeSource source = domain.getCodeSource();
            if (source == null || source.getLocation() == null) {
                throw new IOException("cannot locate the agent jar (no code source)");
            }
            Path jar;
            try {
                jar = Path.of(source.getLocation().toURI());
            } catch (Exception e) {
                throw new IOException("cannot locate the agent jar: " + source.getLocation(), e);
            }
            Map<String, byte[]> entries = new HashMap<>();
            try (JarFile jf = new JarFile(jar.toFile(), false)) {
                Enumeration<JarEntry> all = jf.entries();
                while (all.hasMoreElements()) {
                    JarEntry e = all.nextElement();
                    if (e.isDirectory() || !e.getName().startsWith(PREFIX)) {
                        continue;
                    }
                    try (InputStream in = jf.getInputStream(e)) {
                        entries.put(e.getName().substring(PREFIX.length()), readAll(in));
                    }
                }
            }
            if (entries.isEmpty()) {
                throw new IOException("the agent jar " + jar + " has no inner/ classes: rebuild it");
            }
            return new InnerLoader(entries, domain);
        }

        private static byte[] readAll(InputStream in) throws IOException {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[16384];
            int n;
            while ((n = in.read(buf)) > 0) {
                out.write(buf, 0, n);
            }
            return out.toByteArray();
        }

        @Override
        protected Class<?> findClass(String name) throws ClassNotFoundException {
            byte[] bytes = entries.get(name.replace('.', '/') + ".class");
            if (bytes == null) {
                throw new ClassNotFoundException(name);
            }
            return defineClass(name, bytes, 0, bytes.length, domain);
        }

        @Override
        protected URL findResource(String name) {
            return null;   // py4j reads no resources; the agent neither
        }
    }
}
