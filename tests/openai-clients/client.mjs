// The official openai JavaScript client against Warden, unchanged: a
// whole answer, a streamed one with usage, the model list and a 404,
// printed as one JSON line for tests/openai_clients.rs.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.WARDEN_BASE + "/v1", apiKey: process.env.WARDEN_TOKEN, maxRetries: 0 });
const model = process.env.WARDEN_MODEL;
const messages = [{ role: "system", content: "be brief" }, { role: "user", content: "hi" }];
const out = {};
const r = await client.chat.completions.create({ model, messages });
out.whole = r.choices[0].message.content;
out.usage = r.usage.total_tokens;
let text = "";
let usage = null;
const stream = await client.chat.completions.create({ model, messages, stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage.total_tokens;
}
out.streamed = text;
out.stream_usage = usage;
out.models = [];
for await (const m of client.models.list()) out.models.push(m.id);
try {
  await client.chat.completions.create({ model: "none-such", messages });
} catch (e) {
  out.not_found = e.status;
}
try {
  await client.chat.completions.create({ model, messages: [] });
} catch (e) {
  out.bad_request = e.status;
}
console.log(JSON.stringify(out));
