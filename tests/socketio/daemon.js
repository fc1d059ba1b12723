// A node daemon written as the AIWM reference's JavaScript example is
// (seeds/aiwm-api.md, "WebSocket Client Example"), run by the Rust tests.
// usage: node daemon.js URL TOKEN NODE_ID|- TRANSPORTS SECONDS
// Prints one JSON line per event it receives; exits after SECONDS.
const { io } = require('socket.io-client');
const { randomUUID } = require('crypto');

const [url, token, nodeId, transports, seconds] = process.argv.slice(2);
const auth = { token };
if (nodeId && nodeId !== '-') auth.nodeId = nodeId;
const print = (event, data) => console.log(JSON.stringify({ event, data }));

const socket = io(url + '/ws/node', {
  auth,
  transports: transports.split(','),
  reconnection: false,
});

socket.on('connect', () => print('connect', { transport: socket.io.engine.transport.name }));
socket.on('connect_error', (err) => { print('connect_error', { message: err.message }); process.exit(3); });
socket.on('disconnect', (reason) => print('disconnect', { reason }));
socket.on('error', (data) => print('error', data));

socket.on('connection.ack', (data) => {
  print('connection.ack', data);
  socket.emit('node.register', {
    type: 'node.register',
    messageId: randomUUID(),
    timestamp: new Date().toISOString(),
    data: {
      hostname: 'js-gpu-01',
      ipAddress: '10.10.0.101',
      os: { platform: 'linux', release: '6.1' },
      cpuCores: 12,
      cpuModel: 'JS CPU',
      ramTotal: 4096,
      containerRuntime: { type: 'docker' },
      nodeStatus: 'ready',
    },
  });
});

socket.on('register.ack', (data) => {
  print('register.ack', data);
  const every = data.data.controllerInfo.heartbeatInterval;
  const beat = () => socket.emit('telemetry.heartbeat', {
    type: 'telemetry.heartbeat',
    messageId: randomUUID(),
    timestamp: new Date().toISOString(),
    data: { status: 'healthy', uptimeSeconds: process.uptime(), cpuUsage: 5, ramUsage: 25 },
  });
  beat();
  setInterval(beat, every);
});

for (const command of ['system.healthCheck', 'model.download', 'deployment.create', 'deployment.stop']) {
  socket.on(command, (cmd) => {
    print(command, cmd);
    socket.emit('command.ack', {
      type: 'command.ack', messageId: randomUUID(), timestamp: new Date().toISOString(),
      data: { originalMessageId: cmd.messageId, status: 'acknowledged' }, metadata: cmd.metadata,
    });
    socket.emit('command.result', {
      type: 'command.result', messageId: randomUUID(), timestamp: new Date().toISOString(),
      data: { originalMessageId: cmd.messageId, status: 'success', progress: 100, result: { from: 'js' } },
      metadata: cmd.metadata,
    });
  });
}

setTimeout(() => {
  // Close the transport, as a daemon shutting down does.
  socket.io.engine.close();
  setTimeout(() => process.exit(0), 100);
}, Number(seconds) * 1000);
