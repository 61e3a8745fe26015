package pyprof.agent.impl;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.SeekableByteChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFileAttributes;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.util.EnumSet;
import java.util.Set;

/**
 * Where the agent tells pyprof its port and token: {@code DIR/agent-PID.json}, mode 0600, PID as the
 * JVM sees itself (its own pid namespace; pyprof reads it through /proc/PID/root and maps the pid).
 *
 * <p>DIR is /run/pyprof (mode 0700) when the JVM runs as root, so only root can write there; for any
 * other user it is {@code java.io.tmpdir/pyprof-UID} (mode 0700, owned by that user). A directory that is
 * a symlink, owned by someone else, or writable by group/others is refused. The file is written under a
 * random name created exclusively (O_CREAT|O_EXCL, never through a symlink) with mode 0600, then renamed
 * over the final name: rename(2) replaces a planted symlink instead of following it, and a reader never
 * sees half a file.
 */
final class ConnectionFile {
    static final String ROOT_DIR = "/run/pyprof";
    private static final Set<PosixFilePermission> DIR_MODE = PosixFilePermissions.fromString("rwx------");
    private static final Set<PosixFilePermission> FILE_MODE = PosixFilePermissions.fromString("rw-------");

    final Path dir;
    final Path path;

    private ConnectionFile(Path dir, long pid) {
        this.dir = dir;
        this.path = dir.resolve("agent-" + pid + ".json");
    }

    static ConnectionFile create(long pid, String content) throws IOException {
        int uid = uid(pid);
        IOException first = null;
        for (Path dir : uid == 0
                ? new Path[] {Path.of(ROOT_DIR), Path.of(System.getProperty("java.io.tmpdir"), "pyprof-0")}
                : new Path[] {Path.of(System.getProperty("java.io.tmpdir"), "pyprof-" + uid)}) {
            try {
                ConnectionFile f = new ConnectionFile(dir, pid);
                f.prepareDir(uid);
                f.write(content);
                return f;
            } catch (IOException e) {
                if (first == null) {
                    first = e;
                }
            }
        }
        throw first;
    }

    /** The JVM's user: the owner of /proc/PID (Java has no getuid()). */
    static int uid(long pid) throws IOException {
        return (Integer) Files.getAttribute(Path.of("/proc/" + pid), "unix:uid");
    }

    private void prepareDir(int uid) throws IOException {
        try {
            Files.createDirectory(dir, PosixFilePermissions.asFileAttribute(DIR_MODE));
        } catch (FileAlreadyExistsException e) {
            // checked below
        }
        PosixFileAttributes a = Files.readAttributes(dir, PosixFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
        if (!a.isDirectory() || a.isSymbolicLink()) {
            throw new IOException(dir + " is not a directory");
        }
        int owner = (Integer) Files.getAttribute(dir, "unix:uid", LinkOption.NOFOLLOW_LINKS);
        if (owner != uid) {
            throw new IOException(dir + " belongs to uid " + owner + ", not " + uid);
        }
        if (!a.permissions().equals(DIR_MODE)) {
            Files.setPosixFilePermissions(dir, DIR_MODE);   // ours: tighten it
        }
    }

    private void write(String content) throws IOException {
        byte[] random = new byte[8];
        new SecureRandom().nextBytes(random);
        StringBuilder suffix = new StringBuilder();
        for (byte b : random) {
            suffix.append(String.format("%02x", b));
        }
        Path tmp = dir.resolve("." + path.getFileName() + "." + suffix);
        try (SeekableByteChannel ch = Files.newByteChannel(tmp,
                EnumSet.of(StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE, StandardOpenOption.SYNC),
                PosixFilePermissions.asFileAttribute(FILE_MODE))) {
            ch.write(ByteBuffer.wrap(content.getBytes(StandardCharsets.UTF_8)));
        }
        try {
            Files.setPosixFilePermissions(tmp, FILE_MODE);   // in case the umask was odd: exactly 0600
            Files.move(tmp, path, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            Files.deleteIfExists(tmp);
            throw e;
        }
    }

    /** Deletes the file if it is still ours (a later agent may have replaced it). */
    void delete(String token) {
        try {
            if (Files.isRegularFile(path, LinkOption.NOFOLLOW_LINKS)
                    && new String(Files.readAllBytes(path), StandardCharsets.UTF_8).contains(token)) {
                Files.delete(path);
            }
        } catch (IOException e) {
            // nothing to do: pyprof checks the token anyway
        }
    }
}
