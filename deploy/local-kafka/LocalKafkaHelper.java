// Small companion of deploy/local-kafka/local-kafka. The script compiles it
// once against the Kafka jars (into the jar cache) and uses it for what would
// otherwise take one JVM start per step or per poll (JVM starts are what
// a start-up on a 2-core machine spends its time on):
//
//   ports COUNT                      COUNT distinct free 127.0.0.1 TCP ports
//   run-node CONFIG [FORMAT_ARGS]    format (if FORMAT_ARGS is given), then
//                                    run the broker kafka.Kafka in this JVM
//   wait-brokers COUNT TIMEOUT_S PIDS (BOOTSTRAP CLIENT_PROPS|-)...
//                                    until COUNT brokers are registered and
//                                    unfenced (a metadata request through
//                                    each BOOTSTRAP lists them); PIDS
//                                    (comma-separated) must stay alive
//                                    meanwhile, else fail at once
//   wait-node BOOTSTRAP NODE_ID TIMEOUT_S [PID]
//                                    until NODE_ID is in the metadata that
//                                    BOOTSTRAP answers
//   create-topic BOOTSTRAP NAME PARTITIONS RF [CLIENT_PROPS]
//   check-client BOOTSTRAP CLIENT_PROPS
//                                    one metadata request; exit 0 if it is
//                                    answered, 3 if authentication fails
//
// Everything human-readable goes to stderr; stdout carries only results
// (ports).
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.errors.AuthenticationException;

public final class LocalKafkaHelper {
    public static void main(String[] args) throws Exception {
        if (args.length == 0) usage();
        String[] rest = Arrays.copyOfRange(args, 1, args.length);
        int code;
        switch (args[0]) {
            case "ports": code = ports(rest); break;
            case "run-node": code = runNode(rest); break;
            case "wait-brokers": code = waitBrokers(rest); break;
            case "wait-node": code = waitNode(rest); break;
            case "create-topic": code = createTopic(rest); break;
            case "check-client": code = checkClient(rest); break;
            default: usage(); return;
        }
        System.out.flush();
        if (args[0].equals("run-node") && code == 0) return;
        // Admin client threads and Kafka's static executors must not keep
        // the JVM alive.
        System.exit(code);
    }

    private static void usage() {
        System.err.println("usage: LocalKafkaHelper ports|format|wait-brokers|wait-node|create-topic|check-client ...");
        System.exit(2);
    }

    /** Binds all sockets before closing any, so the ports are distinct. */
    private static int ports(String[] a) throws IOException {
        int count = Integer.parseInt(a[0]);
        List<ServerSocket> sockets = new ArrayList<>();
        try {
            for (int i = 0; i < count; i++) {
                ServerSocket s = new ServerSocket();
                // Not SO_REUSEADDR: a port in TIME_WAIT is not offered.
                s.setReuseAddress(false);
                s.bind(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 0));
                sockets.add(s);
            }
            System.out.println(sockets.stream().map(s -> Integer.toString(s.getLocalPort()))
                    .collect(Collectors.joining(" ")));
        } finally {
            for (ServerSocket s : sockets) s.close();
        }
        return 0;
    }

    /**
     * CONFIG [FORMAT_ARGS_FILE]: format the node's storage first when a file
     * of extra `kafka-storage format` arguments (one per line: --cluster-id,
     * --add-scram, ...) is given, then run the broker (kafka.Kafka) in this
     * same JVM: one JVM start per node instead of two.
     */
    private static int runNode(String[] a) throws Exception {
        String config = a[0];
        if (a.length > 1) {
            List<String> argv = new ArrayList<>(List.of("format", "--config", config));
            for (String line : Files.readAllLines(Path.of(a[1]))) {
                if (!line.isEmpty()) argv.add(line);
            }
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            int rc;
            try (PrintStream ps = new PrintStream(out, true, StandardCharsets.UTF_8)) {
                rc = kafka.tools.StorageTool.execute(argv.toArray(new String[0]), ps);
            }
            System.err.print(out.toString(StandardCharsets.UTF_8));
            if (rc != 0) {
                System.err.println("local-kafka: formatting " + config + " failed (" + rc + ")");
                return rc;
            }
        }
        kafka.Kafka.main(new String[] {config});
        return 0;
    }

    private static Admin admin(String bootstrap, String clientProps) throws IOException {
        Properties p = new Properties();
        if (clientProps != null && !clientProps.isEmpty()) {
            try (InputStream in = new FileInputStream(clientProps)) {
                p.load(in);
            }
        }
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        // Generous: TLS + SCRAM on a loaded 2-core machine can take seconds.
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "50");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "200");
        p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "50");
        p.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "200");
        return Admin.create(p);
    }

    private static Set<Integer> brokerIds(Admin admin) throws Exception {
        Collection<Node> nodes = admin.describeCluster(new DescribeClusterOptions().timeoutMs(10000))
                .nodes().get(12, TimeUnit.SECONDS);
        Set<Integer> ids = new TreeSet<>();
        for (Node n : nodes) ids.add(n.id());
        return ids;
    }

    private static String deadPid(String pids) {
        if (pids == null || pids.isEmpty()) return null;
        for (String pid : pids.split(",")) {
            boolean alive = ProcessHandle.of(Long.parseLong(pid)).map(ProcessHandle::isAlive).orElse(false);
            if (!alive) return pid;
        }
        return null;
    }

    private static String rootCause(Throwable t) {
        while (t.getCause() != null && t.getCause() != t) t = t.getCause();
        return t.getClass().getSimpleName() + ": " + t.getMessage();
    }

    /**
     * COUNT TIMEOUT_S PIDS (BOOTSTRAP CLIENT_PROPS)...: until every target
     * answers a metadata request listing COUNT brokers. CLIENT_PROPS "-" is
     * none (PLAINTEXT). Exit 3 if a target refuses authentication.
     */
    private static int waitBrokers(String[] a) throws Exception {
        int count = Integer.parseInt(a[0]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(a[1]));
        String pids = a[2];
        for (int t = 3; t + 1 < a.length; t += 2) {
            String bootstrap = a[t];
            String props = a[t + 1].equals("-") ? null : a[t + 1];
            try (Admin admin = admin(bootstrap, props)) {
                String last = "";
                while (true) {
                    String dead = deadPid(pids);
                    if (dead != null) {
                        System.err.println("local-kafka: broker process " + dead + " exited during start-up");
                        return 1;
                    }
                    try {
                        Set<Integer> ids = brokerIds(admin);
                        if (ids.size() >= count) break;
                        last = "brokers registered so far: " + ids;
                    } catch (ExecutionException | java.util.concurrent.TimeoutException e) {
                        if (e.getCause() instanceof AuthenticationException) {
                            System.err.println("local-kafka: " + rootCause(e));
                            return 3;
                        }
                        last = rootCause(e);
                    }
                    if (System.nanoTime() > deadline) {
                        System.err.println("local-kafka: timed out waiting for " + count + " brokers at " + bootstrap + " (" + last + ")");
                        return 1;
                    }
                    Thread.sleep(100);
                }
            }
        }
        return 0;
    }

    private static int waitNode(String[] a) throws Exception {
        String bootstrap = a[0];
        int id = Integer.parseInt(a[1]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(a[2]));
        String pid = a.length > 3 ? a[3] : null;
        try (Admin admin = admin(bootstrap, null)) {
            String last = "";
            while (true) {
                if (deadPid(pid) != null) {
                    System.err.println("local-kafka: node " + id + " (pid " + pid + ") exited during start-up");
                    return 1;
                }
                try {
                    Set<Integer> ids = brokerIds(admin);
                    if (ids.contains(id)) return 0;
                    last = "brokers: " + ids;
                } catch (ExecutionException | java.util.concurrent.TimeoutException e) {
                    last = rootCause(e);
                }
                if (System.nanoTime() > deadline) {
                    System.err.println("local-kafka: timed out waiting for node " + id + " at " + bootstrap + " (" + last + ")");
                    return 1;
                }
                Thread.sleep(100);
            }
        }
    }

    private static int createTopic(String[] a) throws Exception {
        String props = a.length > 4 ? a[4] : null;
        try (Admin admin = admin(a[0], props)) {
            admin.createTopics(List.of(new NewTopic(a[1], Integer.parseInt(a[2]), Short.parseShort(a[3]))))
                    .all().get(30, TimeUnit.SECONDS);
        }
        return 0;
    }

    private static int checkClient(String[] a) throws Exception {
        try (Admin admin = admin(a[0], a[1])) {
            System.err.println("local-kafka: metadata answered, brokers " + brokerIds(admin));
            return 0;
        } catch (ExecutionException e) {
            System.err.println("local-kafka: " + rootCause(e));
            return e.getCause() instanceof AuthenticationException ? 3 : 1;
        }
    }
}
