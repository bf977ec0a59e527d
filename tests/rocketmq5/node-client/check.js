// Sends messages with the official RocketMQ 5 Node.js client (npm rocketmq-client-nodejs) and
// receives them back with its simple consumer, acknowledging each. Exits non-zero on the first
// thing a user would notice; the last line of a success is `RESULT {json}`.
//
// Usage: node check.js ENDPOINT TOPIC
const { Producer, SimpleConsumer } = require('rocketmq-client-nodejs');

function fail(why) {
  console.log(`FAILED: ${why}`);
  process.exit(1);
}

async function main() {
  const [endpoint, topic] = process.argv.slice(2);
  if (!endpoint || !topic) fail('usage: node check.js ENDPOINT TOPIC');
  const producer = new Producer({ endpoints: endpoint });
  await producer.startup();
  const sent = new Map();
  for (let i = 0; i < 20; i++) {
    const body = Buffer.from(`node client ${i}`);
    const tag = i % 2 === 0 ? 'even' : 'odd';
    const receipt = await producer.send({ topic, tag, keys: [`k${i}`], body });
    if (!receipt.messageId) fail(`send ${i} returned no message id`);
    if (tag === 'even') sent.set(receipt.messageId, body.toString());
  }
  const consumer = new SimpleConsumer({
    consumerGroup: 'g-node-client',
    endpoints: endpoint,
    subscriptions: new Map().set(topic, 'even'),
    awaitDuration: 3000,
  });
  await consumer.startup();
  const received = new Map();
  const deadline = Date.now() + 60000;
  while (received.size < sent.size && Date.now() < deadline) {
    let messages;
    try {
      messages = await consumer.receive(16);
    } catch (e) {
      // What the server calls transient (no master during an election): try again, as an
      // application's receive loop does.
      if (e && (e.code === 50002 || e.code === 50400)) {
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      throw e;
    }
    for (const m of messages) {
      if (m.tag !== 'even') fail(`the tag filter let ${m.tag} through`);
      received.set(m.messageId, m.body.toString());
      await consumer.ack(m);
    }
  }
  for (const [id, body] of sent) {
    if (received.get(id) !== body) fail(`message ${id} (${body}) was not received intact`);
  }
  if (received.size !== sent.size) fail(`received ${received.size} messages, sent ${sent.size} tagged even`);
  console.log(`RESULT ${JSON.stringify({ sent: 20, received_even: received.size })}`);
  // The client's logger complains when written after shutdown; the check is done.
  process.exit(0);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
