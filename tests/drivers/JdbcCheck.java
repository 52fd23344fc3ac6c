// pgjdbc through pgrouter in transaction pooling: named server-prepared
// statements (S_1, S_2, ... the same names on every connection) from the first
// use (prepareThreshold=1), binary transfer, setReadOnly transactions, batches,
// and errors with the server's SQLSTATE. Run by tests/drivers.rs with
// `java -cp postgresql.jar JdbcCheck.java URL USER PASSWORD`; exits 1 on any surprise.
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;

public class JdbcCheck {
    static final int CLIENTS = 8;
    static final int ROUNDS = 30;

    public static void main(String[] args) throws Exception {
        String url = args[0] + "?prepareThreshold=1&binaryTransfer=true";
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        try (Connection c = DriverManager.getConnection(url, props); Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS drv_jdbc");
            s.execute("CREATE TABLE drv_jdbc (client int, n int)");
        }
        ExecutorService pool = Executors.newFixedThreadPool(CLIENTS);
        List<Future<?>> done = new ArrayList<>();
        for (int i = 0; i < CLIENTS; i++) {
            final int client = i;
            done.add(pool.submit(() -> { run(url, props, client); return null; }));
        }
        List<String> failures = new ArrayList<>();
        for (int i = 0; i < CLIENTS; i++) {
            try {
                done.get(i).get();
            } catch (ExecutionException e) {
                failures.add("client " + i + ": " + e.getCause());
            }
        }
        pool.shutdown();
        if (!failures.isEmpty()) {
            failures.forEach(System.out::println);
            System.exit(1);
        }
        System.out.println("ok: " + CLIENTS + " pgjdbc clients x " + ROUNDS + " rounds");
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static void run(String url, Properties props, int client) throws SQLException {
        try (Connection c = DriverManager.getConnection(url, props)) {
            PreparedStatement insert = c.prepareStatement("INSERT INTO drv_jdbc VALUES (?, ?)");
            PreparedStatement count = c.prepareStatement("SELECT count(*) FROM drv_jdbc WHERE client = ?");
            PreparedStatement binary = c.prepareStatement("SELECT ?::int8 * 2, ?::text, now()");
            for (int n = 0; n < ROUNDS; n++) {
                insert.setInt(1, client);
                insert.setInt(2, n);
                check(insert.executeUpdate() == 1, "insert count");
                count.setInt(1, client);
                try (ResultSet rs = count.executeQuery()) {
                    rs.next();
                    check(rs.getLong(1) == n + 1, "client " + client + " saw " + rs.getLong(1) + " rows after " + (n + 1) + " inserts");
                }
                binary.setLong(1, n);
                binary.setString(2, "c" + client);
                try (ResultSet rs = binary.executeQuery()) {
                    rs.next();
                    check(rs.getLong(1) == 2L * n && rs.getString(2).equals("c" + client), "binary round trip");
                }
            }
            // A batch in one transaction.
            c.setAutoCommit(false);
            for (int k = 0; k < 20; k++) {
                insert.setInt(1, client);
                insert.setInt(2, 1000 + k);
                insert.addBatch();
            }
            insert.executeBatch();
            c.commit();
            // A read-only transaction (may run on a replica) still sees the committed batch.
            c.setReadOnly(true);
            count.setInt(1, client);
            try (ResultSet rs = count.executeQuery()) {
                rs.next();
                check(rs.getLong(1) == ROUNDS + 20, "read-only transaction saw " + rs.getLong(1));
            }
            c.commit();
            c.setReadOnly(false);
            c.setAutoCommit(true);
            try (Statement s = c.createStatement()) {
                s.executeQuery("SELECT 1/0");
                throw new AssertionError("division by zero passed");
            } catch (SQLException e) {
                check("22012".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
            count.setInt(1, client);
            try (ResultSet rs = count.executeQuery()) {
                rs.next();
                check(rs.getLong(1) == ROUNDS + 20, "session broken after an error");
            }
        }
    }
}
