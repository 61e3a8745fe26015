package pyprof.agent.impl;

import java.lang.management.ManagementFactory;
import java.lang.management.ThreadInfo;
import java.lang.management.ThreadMXBean;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import javax.management.MBeanServer;
import javax.management.ObjectName;

/**
 * In-process diagnostic commands through the DiagnosticCommand MBean (what jcmd runs, without the
 * Attach Listener): Compiler.codelist for the code cache, Thread.print for thread ids.
 *
 * <p>OS thread ids: Java has no public API for them (JDK 17-25). Thread.print prints every thread's
 * {@code nid} (hex on 17, decimal on 19+), its Java thread id ({@code #N}) for JavaThreads, and the VM's
 * own threads (GC, VM Thread, compiler threads) too. Names and states of Java threads come from
 * ThreadMXBean by Java id (a name is printed raw in the dump, so it is not parsed from there for them).
 */
final class Diagnostics {
    private static final String DCMD = "com.sun.management:type=DiagnosticCommand";
    private static final String[] SIGNATURE = {String[].class.getName()};
    // "name" #12 [4711] daemon prio=5 os_prio=0 cpu=... elapsed=... tid=0x... nid=0x1267 runnable  [0x...]
    // "VM Thread" os_prio=0 cpu=... elapsed=... tid=0x... nid=4711 runnable
    private static final Pattern HEADER = Pattern.compile(
            "^\"(.*)\" (?:#(\\d+) )?(?:\\[(\\d+)\\] )?(daemon )?.*?\\bnid=(0x[0-9a-fA-F]+|\\d+)\\s*(.*)$");
    private static final Pattern TRAILING_ADDRESS = Pattern.compile("\\s*\\[0x[0-9a-fA-F]+\\]\\s*$");

    private final MBeanServer server = ManagementFactory.getPlatformMBeanServer();
    private final ObjectName name;

    Diagnostics() throws Exception {
        name = new ObjectName(DCMD);
    }

    String run(String operation, String... args) throws Exception {
        return (String) server.invoke(name, operation, new Object[] {args}, SIGNATURE);
    }

    String codelist() throws Exception {
        return run("compilerCodelist");
    }

    List<Map<String, Object>> threads() throws Exception {
        String dump = run("threadPrint");
        List<Map<String, Object>> out = new ArrayList<>();
        List<Long> javaIds = new ArrayList<>();
        for (String line : dump.split("\n")) {
            Matcher m = HEADER.matcher(line);
            if (!m.matches()) {
                continue;
            }
            String nid = m.group(5);
            long osTid = nid.startsWith("0x") ? Long.parseLong(nid.substring(2), 16) : Long.parseLong(nid);
            Map<String, Object> t = new LinkedHashMap<>();
            t.put("name", m.group(1));
            Long javaId = m.group(2) == null ? null : Long.parseLong(m.group(2));
            t.put("java_id", javaId);
            t.put("os_tid", osTid);
            t.put("daemon", m.group(4) != null);
            t.put("state", TRAILING_ADDRESS.matcher(m.group(6)).replaceAll("").trim());
            t.put("kind", javaId == null ? "vm" : "java");
            if (javaId != null) {
                javaIds.add(javaId);
            }
            out.add(t);
        }
        ThreadMXBean mx = ManagementFactory.getThreadMXBean();
        long[] ids = javaIds.stream().mapToLong(Long::longValue).toArray();
        ThreadInfo[] infos = mx.getThreadInfo(ids, 0);
        Map<Long, ThreadInfo> byId = new LinkedHashMap<>();
        for (ThreadInfo ti : infos) {
            if (ti != null) {
                byId.put(ti.getThreadId(), ti);
            }
        }
        for (Map<String, Object> t : out) {
            ThreadInfo ti = byId.get((Long) t.get("java_id"));
            if (ti != null) {
                t.put("name", ti.getThreadName());
                t.put("state", ti.getThreadState().name());
                t.put("daemon", ti.isDaemon());
            }
        }
        return out;
    }
}
