package nucleograph;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermission;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.EnumSet;
import java.util.List;
import java.util.Map;

import inet.ipaddr.IPAddressString;
import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.graphdb.Result;
import org.neo4j.io.ByteUnit;

/**
 * Runs Neo4j Community embedded with the Bolt connector on a loopback address and auth ON.
 *
 * <p>Configuration comes from the environment (set by {@code nucleograph db start}):
 * NUCLEOGRAPH_NEO4J_HOME (data directory, required), NUCLEOGRAPH_NEO4J_HOST (default 127.0.0.1),
 * NUCLEOGRAPH_NEO4J_PORT (default 7687), NUCLEOGRAPH_NEO4J_PAGECACHE (e.g. 256m),
 * NEO4J_PASSWORD (else read from, or generated once into, HOME/password with mode 0600).
 * The password is never printed.
 */
public final class Launcher {
    private Launcher() {}

    public static void main(String[] args) throws Exception {
        Map<String, String> env = System.getenv();
        String homeText = env.get("NUCLEOGRAPH_NEO4J_HOME");
        if (homeText == null || homeText.isBlank()) {
            System.err.println("NUCLEOGRAPH_NEO4J_HOME is not set: set it to the Neo4j data directory");
            System.exit(2);
        }
        Path home = Path.of(homeText).toAbsolutePath();
        Files.createDirectories(home);
        String host = env.getOrDefault("NUCLEOGRAPH_NEO4J_HOST", "127.0.0.1");
        int port = Integer.parseInt(env.getOrDefault("NUCLEOGRAPH_NEO4J_PORT", "7687"));
        String pageCache = env.getOrDefault("NUCLEOGRAPH_NEO4J_PAGECACHE", "256m");
        String password = resolvePassword(home, env.get("NEO4J_PASSWORD"));

        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress(host, port))
                .setConfig(BoltConnector.advertised_address, new SocketAddress(host, port))
                .setConfig(HttpConnector.enabled, false)
                .setConfig(GraphDatabaseSettings.auth_enabled, true)
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.parse(pageCache))
                .setConfig(GraphDatabaseSettings.transaction_timeout, Duration.ofMinutes(10))
                // A development store: no 256 MB preallocated transaction log per database.
                .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                .setConfig(GraphDatabaseSettings.logical_log_rotation_threshold, ByteUnit.mebiBytes(64))
                .setConfig(GraphDatabaseSettings.keep_logical_logs, "2 files")
                // LOAD CSV must not read this machine's files (file:///etc/passwd) nor fetch URLs from
                // any address (SSRF) through the read-only console: nucleograph never uses it.
                .setConfig(GraphDatabaseSettings.allow_file_urls, false)
                .setConfig(GraphDatabaseInternalSettings.cypher_ip_blocklist,
                        List.of(new IPAddressString("0.0.0.0/0"), new IPAddressString("::/0")))
                .build();

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("nucleograph-neo4j: shutting down");
            dbms.shutdown();
            System.out.println("nucleograph-neo4j: stopped");
        }, "neo4j-shutdown"));

        setPassword(dbms, password);
        System.out.println("nucleograph-neo4j: READY bolt://" + host + ":" + port);
        System.out.flush();
        Thread.currentThread().join();
    }

    /** The password from the environment, else the stored one, else a new one stored 0600. */
    private static String resolvePassword(Path home, String fromEnv) throws IOException {
        Path file = home.resolve("password");
        if (fromEnv != null && !fromEnv.isEmpty()) {
            if (fromEnv.length() < 8) {
                System.err.println("NEO4J_PASSWORD must have at least 8 characters");
                System.exit(2);
            }
            return fromEnv;
        }
        if (Files.exists(file)) {
            return Files.readString(file, StandardCharsets.UTF_8).strip();
        }
        SecureRandom random = new SecureRandom();
        String alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 24; i++) {
            sb.append(alphabet.charAt(random.nextInt(alphabet.length())));
        }
        Files.writeString(file, sb.toString(), StandardCharsets.UTF_8);
        Files.setPosixFilePermissions(file, EnumSet.of(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE));
        return sb.toString();
    }

    /** Sets the neo4j user's password through the system database (the embedded API bypasses auth). */
    private static void setPassword(DatabaseManagementService dbms, String password) {
        GraphDatabaseService system = dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME);
        try {
            system.executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $pw CHANGE NOT REQUIRED",
                    Map.of("pw", password));
        } catch (RuntimeException e) {
            // Neo4j refuses to "change" a password to the one already set; that is the normal restart case.
            String message = String.valueOf(e.getMessage());
            if (!message.contains("cannot be the same")) {
                throw e;
            }
        }
    }
}
