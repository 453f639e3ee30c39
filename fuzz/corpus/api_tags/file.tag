ringpush-tag 1 crc32=71329bb9 bytes=91
{"appId":"demo","tagId":1,"tagName":"vip","createdAt":1,"updatedAt":2,"users":2}
alice
bob
