import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import type { Server } from 'node:net';
import { dirname } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { freePort } from './nginx';
import { startKafka } from './kafka';
import type { KafkaBroker } from './kafka';

describe('startKafka', () => {
  let broker: KafkaBroker;
  beforeAll(async () => {
    broker = await startKafka();
  }, 90_000);
  afterAll(() => broker?.stop(), 30_000);

  test('a real broker: a topic made with the admin takes a message a consumer reads back', async () => {
    expect(broker.address).toBe(`127.0.0.1:${broker.port}`);
    expect(broker.controllerPort).not.toBe(broker.port);
    const kafka = new Kafka({ clientId: 'testkit', brokers: [broker.address], logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic: 'made', numPartitions: 2 }], waitForLeaders: true });
    const [meta] = (await admin.fetchTopicMetadata({ topics: ['made'] })).topics;
    await admin.disconnect();
    expect(meta.partitions).toHaveLength(2);

    const producer = kafka.producer({ allowAutoTopicCreation: false });
    await producer.connect();
    await producer.send({ topic: 'made', messages: [{ key: 'k', value: 'v', partition: 1 }] });
    await producer.disconnect();
    const consumer = kafka.consumer({ groupId: 'testkit', sessionTimeout: 6000, maxWaitTimeInMs: 50 });
    await consumer.connect();
    await consumer.subscribe({ topic: 'made', fromBeginning: true });
    const got = await new Promise<string>((resolve) => {
      void consumer.run({ eachMessage: async ({ partition, message }) => resolve(`${partition}:${message.value}`) });
    });
    await consumer.disconnect();
    expect(got).toBe('1:v');
  });

  test('stop() ends the broker and removes its files', async () => {
    const other = await startKafka();
    const dir = dirname(other.logFile);
    expect(existsSync(dir)).toBe(true);
    await other.stop();
    expect(existsSync(dir)).toBe(false);
    const kafka = new Kafka({
      clientId: 'testkit',
      brokers: [other.address],
      logLevel: logLevel.NOTHING,
      connectionTimeout: 500,
      retry: { retries: 0 },
    });
    await expect(kafka.admin().connect()).rejects.toThrow();
  }, 60_000);
});

test('a broker that cannot bind its port exits, and the error shows its log', async () => {
  const taken: Server = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  const port = (taken.address() as { port: number }).port;
  const controller = await freePort();
  try {
    await expect(
      startKafka({
        properties: {
          listeners: `PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controller}`,
          'controller.quorum.bootstrap.servers': `127.0.0.1:${controller}`,
        },
      }),
    ).rejects.toThrow(
      /the Kafka broker exited \(\d+\) before it answered:\n--- broker\.log ---\n[\s\S]*(bind|Address already in use)/,
    );
  } finally {
    taken.close();
  }
}, 60_000);
