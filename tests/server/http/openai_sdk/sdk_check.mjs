// Calls a live kvserve through the official OpenAI SDK for Node and prints what came back as one
// JSON object on stdout; tests/server/http/openai_sdk_test.cc compares it with the gRPC outputs.
//   node sdk_check.mjs BASE_URL API_KEY PROMPT
import OpenAI from 'openai';

const [baseURL, apiKey, prompt] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
const messages = [
  { role: 'system', content: 'You tell stories.' },
  { role: 'user', content: prompt },
];
const out = {};

const models = await client.models.list();
out.models = models.data.map((m) => m.id);
const model = out.models[0];

const completion = await client.completions.create({
  model, prompt, max_tokens: 24, temperature: 0,
});
out.completion = {
  text: completion.choices[0].text,
  finish_reason: completion.choices[0].finish_reason,
  usage: completion.usage,
  object: completion.object,
};

const chat = await client.chat.completions.create({
  model, messages, max_tokens: 30, temperature: 0,
});
out.chat = {
  content: chat.choices[0].message.content,
  role: chat.choices[0].message.role,
  finish_reason: chat.choices[0].finish_reason,
  usage: chat.usage,
};

const stream = await client.chat.completions.create({
  model, messages, max_tokens: 30, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
const streamed = { content: '', roles: [], finish_reasons: [], chunks: 0, usage: null };
for await (const chunk of stream) {
  streamed.chunks += 1;
  if (chunk.usage) streamed.usage = chunk.usage;
  for (const choice of chunk.choices) {
    if (choice.delta.role) streamed.roles.push(choice.delta.role);
    if (choice.delta.content) streamed.content += choice.delta.content;
    if (choice.finish_reason) streamed.finish_reasons.push(choice.finish_reason);
  }
}
out.stream = streamed;

const errorOf = async (call) => {
  try {
    await call();
    return null;
  } catch (e) {
    return { name: e.constructor.name, status: e.status, param: e.param ?? null,
             code: e.code ?? null, type: e.type ?? null, message: e.message };
  }
};
out.bad_top_p = await errorOf(() => client.completions.create({ model, prompt, top_p: 5 }));
out.unknown_model = await errorOf(() => client.completions.create({ model: 'no-such-model', prompt }));

console.log(JSON.stringify(out));
