//! Static tables: provinces and regencies (Kemendagri codes), names, places, clinical codes.

/// A regency (kabupaten) or city (kota) with its Kemendagri code within the province, a
/// relative population weight within the province, its number of districts (kecamatan codes
/// 01..=districts used here) and the first two digits of its postal codes.
pub struct Regency {
    pub code: u8,
    pub name: &'static str,
    pub weight: u16,
    pub districts: u8,
    pub postal: u8,
}

/// A province: Kemendagri code, name, population in units of 100,000 (about 2020), UTC
/// offset in hours (WIB 7, WITA 8, WIT 9) and some of its regencies.
pub struct Province {
    pub code: u8,
    pub name: &'static str,
    pub pop: u16,
    pub tz: u8,
    pub regencies: &'static [Regency],
}

macro_rules! r {
    ($code:expr, $name:expr, $w:expr, $d:expr, $p:expr) => {
        Regency { code: $code, name: $name, weight: $w, districts: $d, postal: $p }
    };
}

pub static PROVINCES: &[Province] = &[
    Province { code: 11, name: "Aceh", pop: 54, tz: 7, regencies: &[
        r!(71, "Kota Banda Aceh", 25, 9, 23), r!(8, "Kabupaten Aceh Besar", 41, 23, 23),
        r!(11, "Kabupaten Aceh Utara", 60, 27, 24), r!(9, "Kabupaten Pidie", 44, 23, 24),
        r!(73, "Kota Lhokseumawe", 19, 4, 24)] },
    Province { code: 12, name: "Sumatera Utara", pop: 151, tz: 7, regencies: &[
        r!(71, "Kota Medan", 245, 21, 20), r!(7, "Kabupaten Deli Serdang", 195, 22, 20),
        r!(8, "Kabupaten Asahan", 77, 25, 21), r!(9, "Kabupaten Simalungun", 99, 32, 21),
        r!(72, "Kota Pematangsiantar", 27, 8, 21), r!(12, "Kabupaten Toba", 21, 16, 22)] },
    Province { code: 13, name: "Sumatera Barat", pop: 56, tz: 7, regencies: &[
        r!(71, "Kota Padang", 91, 11, 25), r!(75, "Kota Bukittinggi", 12, 3, 26),
        r!(6, "Kabupaten Agam", 53, 16, 26), r!(5, "Kabupaten Padang Pariaman", 43, 17, 25)] },
    Province { code: 14, name: "Riau", pop: 66, tz: 7, regencies: &[
        r!(71, "Kota Pekanbaru", 100, 15, 28), r!(73, "Kota Dumai", 32, 7, 28),
        r!(6, "Kabupaten Kampar", 84, 21, 28)] },
    Province { code: 15, name: "Jambi", pop: 36, tz: 7, regencies: &[
        r!(71, "Kota Jambi", 61, 11, 36), r!(5, "Kabupaten Muaro Jambi", 40, 11, 36)] },
    Province { code: 16, name: "Sumatera Selatan", pop: 86, tz: 7, regencies: &[
        r!(71, "Kota Palembang", 167, 18, 30), r!(3, "Kabupaten Muara Enim", 61, 22, 31),
        r!(4, "Kabupaten Lahat", 43, 24, 31)] },
    Province { code: 17, name: "Bengkulu", pop: 20, tz: 7, regencies: &[
        r!(71, "Kota Bengkulu", 37, 9, 38), r!(5, "Kabupaten Rejang Lebong", 27, 15, 39)] },
    Province { code: 18, name: "Lampung", pop: 90, tz: 7, regencies: &[
        r!(71, "Kota Bandar Lampung", 117, 20, 35), r!(3, "Kabupaten Lampung Selatan", 106, 17, 35),
        r!(5, "Kabupaten Lampung Tengah", 146, 28, 34), r!(4, "Kabupaten Lampung Timur", 111, 24, 34)] },
    Province { code: 19, name: "Kepulauan Bangka Belitung", pop: 15, tz: 7, regencies: &[
        r!(71, "Kota Pangkalpinang", 22, 7, 33), r!(1, "Kabupaten Bangka", 33, 8, 33)] },
    Province { code: 21, name: "Kepulauan Riau", pop: 21, tz: 7, regencies: &[
        r!(71, "Kota Batam", 120, 12, 29), r!(72, "Kota Tanjungpinang", 23, 4, 29)] },
    Province { code: 31, name: "DKI Jakarta", pop: 106, tz: 7, regencies: &[
        r!(71, "Kota Jakarta Selatan", 223, 10, 12), r!(72, "Kota Jakarta Timur", 305, 10, 13),
        r!(73, "Kota Jakarta Pusat", 106, 8, 10), r!(74, "Kota Jakarta Barat", 244, 8, 11),
        r!(75, "Kota Jakarta Utara", 179, 6, 14), r!(1, "Kabupaten Kepulauan Seribu", 3, 2, 14)] },
    Province { code: 32, name: "Jawa Barat", pop: 494, tz: 7, regencies: &[
        r!(1, "Kabupaten Bogor", 543, 40, 16), r!(2, "Kabupaten Sukabumi", 272, 47, 43),
        r!(3, "Kabupaten Cianjur", 248, 32, 43), r!(4, "Kabupaten Bandung", 362, 31, 40),
        r!(5, "Kabupaten Garut", 258, 42, 44), r!(6, "Kabupaten Tasikmalaya", 186, 39, 46),
        r!(9, "Kabupaten Cirebon", 227, 40, 45), r!(15, "Kabupaten Karawang", 237, 30, 41),
        r!(16, "Kabupaten Bekasi", 311, 23, 17), r!(71, "Kota Bogor", 104, 6, 16),
        r!(73, "Kota Bandung", 244, 30, 40), r!(75, "Kota Bekasi", 254, 12, 17),
        r!(76, "Kota Depok", 206, 11, 16)] },
    Province { code: 33, name: "Jawa Tengah", pop: 370, tz: 7, regencies: &[
        r!(1, "Kabupaten Cilacap", 194, 24, 53), r!(2, "Kabupaten Banyumas", 178, 27, 53),
        r!(8, "Kabupaten Magelang", 130, 21, 56), r!(10, "Kabupaten Klaten", 126, 26, 57),
        r!(19, "Kabupaten Kudus", 85, 9, 59), r!(20, "Kabupaten Jepara", 122, 16, 59),
        r!(22, "Kabupaten Semarang", 105, 19, 50), r!(28, "Kabupaten Tegal", 160, 18, 52),
        r!(29, "Kabupaten Brebes", 198, 17, 52), r!(72, "Kota Surakarta", 52, 5, 57),
        r!(74, "Kota Semarang", 165, 16, 50)] },
    Province { code: 34, name: "DI Yogyakarta", pop: 37, tz: 7, regencies: &[
        r!(1, "Kabupaten Kulon Progo", 44, 12, 55), r!(2, "Kabupaten Bantul", 99, 17, 55),
        r!(3, "Kabupaten Gunungkidul", 75, 18, 55), r!(4, "Kabupaten Sleman", 113, 17, 55),
        r!(71, "Kota Yogyakarta", 37, 14, 55)] },
    Province { code: 35, name: "Jawa Timur", pop: 411, tz: 7, regencies: &[
        r!(6, "Kabupaten Kediri", 164, 26, 64), r!(7, "Kabupaten Malang", 265, 33, 65),
        r!(9, "Kabupaten Jember", 254, 31, 68), r!(10, "Kabupaten Banyuwangi", 171, 25, 68),
        r!(15, "Kabupaten Sidoarjo", 208, 18, 61), r!(17, "Kabupaten Jombang", 132, 21, 61),
        r!(24, "Kabupaten Lamongan", 134, 27, 62), r!(25, "Kabupaten Gresik", 131, 18, 61),
        r!(71, "Kota Kediri", 29, 3, 64), r!(73, "Kota Malang", 84, 5, 65),
        r!(78, "Kota Surabaya", 287, 31, 60)] },
    Province { code: 36, name: "Banten", pop: 121, tz: 7, regencies: &[
        r!(1, "Kabupaten Pandeglang", 127, 35, 42), r!(2, "Kabupaten Lebak", 139, 28, 42),
        r!(3, "Kabupaten Tangerang", 325, 29, 15), r!(4, "Kabupaten Serang", 162, 29, 42),
        r!(71, "Kota Tangerang", 190, 13, 15), r!(72, "Kota Cilegon", 43, 8, 42),
        r!(73, "Kota Serang", 69, 6, 42), r!(74, "Kota Tangerang Selatan", 135, 7, 15)] },
    Province { code: 51, name: "Bali", pop: 43, tz: 8, regencies: &[
        r!(2, "Kabupaten Tabanan", 46, 10, 82), r!(3, "Kabupaten Badung", 55, 6, 80),
        r!(4, "Kabupaten Gianyar", 52, 7, 80), r!(8, "Kabupaten Buleleng", 79, 9, 81),
        r!(71, "Kota Denpasar", 73, 4, 80)] },
    Province { code: 52, name: "Nusa Tenggara Barat", pop: 54, tz: 8, regencies: &[
        r!(1, "Kabupaten Lombok Barat", 72, 10, 83), r!(3, "Kabupaten Lombok Timur", 133, 21, 83),
        r!(71, "Kota Mataram", 43, 6, 83)] },
    Province { code: 53, name: "Nusa Tenggara Timur", pop: 55, tz: 8, regencies: &[
        r!(71, "Kota Kupang", 44, 6, 85), r!(1, "Kabupaten Kupang", 37, 24, 85),
        r!(10, "Kabupaten Sikka", 32, 21, 86)] },
    Province { code: 61, name: "Kalimantan Barat", pop: 54, tz: 7, regencies: &[
        r!(71, "Kota Pontianak", 66, 6, 78), r!(72, "Kota Singkawang", 24, 5, 79),
        r!(4, "Kabupaten Mempawah", 30, 9, 78)] },
    Province { code: 62, name: "Kalimantan Tengah", pop: 27, tz: 7, regencies: &[
        r!(71, "Kota Palangka Raya", 29, 5, 73), r!(2, "Kabupaten Kotawaringin Timur", 43, 17, 74)] },
    Province { code: 63, name: "Kalimantan Selatan", pop: 41, tz: 8, regencies: &[
        r!(71, "Kota Banjarmasin", 66, 5, 70), r!(72, "Kota Banjarbaru", 25, 5, 70),
        r!(3, "Kabupaten Banjar", 57, 20, 70)] },
    Province { code: 64, name: "Kalimantan Timur", pop: 38, tz: 8, regencies: &[
        r!(71, "Kota Balikpapan", 69, 6, 76), r!(72, "Kota Samarinda", 83, 10, 75),
        r!(2, "Kabupaten Kutai Kartanegara", 73, 18, 75)] },
    Province { code: 65, name: "Kalimantan Utara", pop: 7, tz: 8, regencies: &[
        r!(71, "Kota Tarakan", 24, 4, 77), r!(1, "Kabupaten Malinau", 8, 15, 77)] },
    Province { code: 71, name: "Sulawesi Utara", pop: 26, tz: 8, regencies: &[
        r!(71, "Kota Manado", 45, 11, 95), r!(72, "Kota Bitung", 23, 8, 95),
        r!(6, "Kabupaten Minahasa Utara", 22, 10, 95)] },
    Province { code: 72, name: "Sulawesi Tengah", pop: 30, tz: 8, regencies: &[
        r!(71, "Kota Palu", 37, 8, 94), r!(10, "Kabupaten Sigi", 24, 15, 94)] },
    Province { code: 73, name: "Sulawesi Selatan", pop: 91, tz: 8, regencies: &[
        r!(71, "Kota Makassar", 142, 15, 90), r!(6, "Kabupaten Gowa", 77, 18, 92),
        r!(11, "Kabupaten Bone", 80, 27, 92), r!(73, "Kota Palopo", 18, 9, 91)] },
    Province { code: 74, name: "Sulawesi Tenggara", pop: 26, tz: 8, regencies: &[
        r!(71, "Kota Kendari", 35, 11, 93), r!(4, "Kabupaten Konawe", 26, 27, 93)] },
    Province { code: 75, name: "Gorontalo", pop: 12, tz: 8, regencies: &[
        r!(71, "Kota Gorontalo", 20, 9, 96), r!(1, "Kabupaten Gorontalo", 39, 19, 96)] },
    Province { code: 76, name: "Sulawesi Barat", pop: 14, tz: 8, regencies: &[
        r!(4, "Kabupaten Mamuju", 28, 11, 91), r!(1, "Kabupaten Majene", 17, 8, 91)] },
    Province { code: 81, name: "Maluku", pop: 18, tz: 9, regencies: &[
        r!(71, "Kota Ambon", 35, 5, 97), r!(3, "Kabupaten Maluku Tengah", 42, 18, 97)] },
    Province { code: 82, name: "Maluku Utara", pop: 13, tz: 9, regencies: &[
        r!(71, "Kota Ternate", 21, 8, 97), r!(1, "Kabupaten Halmahera Barat", 13, 9, 97)] },
    Province { code: 91, name: "Papua Barat", pop: 6, tz: 9, regencies: &[
        r!(5, "Kabupaten Manokwari", 19, 9, 98)] },
    Province { code: 92, name: "Papua Barat Daya", pop: 6, tz: 9, regencies: &[
        r!(71, "Kota Sorong", 28, 10, 98)] },
    Province { code: 93, name: "Papua Selatan", pop: 5, tz: 9, regencies: &[
        r!(1, "Kabupaten Merauke", 23, 20, 99)] },
    Province { code: 94, name: "Papua", pop: 10, tz: 9, regencies: &[
        r!(71, "Kota Jayapura", 40, 5, 99), r!(3, "Kabupaten Jayapura", 17, 19, 99)] },
    Province { code: 95, name: "Papua Tengah", pop: 14, tz: 9, regencies: &[
        r!(4, "Kabupaten Nabire", 17, 15, 98), r!(9, "Kabupaten Mimika", 31, 18, 99)] },
    Province { code: 96, name: "Papua Pegunungan", pop: 14, tz: 9, regencies: &[
        r!(2, "Kabupaten Jayawijaya", 27, 40, 99)] },
];

/// Naming tradition, by province.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Culture {
    General,
    Sundanese,
    Batak,
    Minang,
    Bali,
    Minahasa,
    Bugis,
    Maluku,
    Papua,
}

pub fn culture(province: u8) -> Culture {
    match province {
        12 => Culture::Batak,
        13 => Culture::Minang,
        32 | 36 => Culture::Sundanese,
        51 => Culture::Bali,
        71 => Culture::Minahasa,
        73 | 76 => Culture::Bugis,
        81 | 82 => Culture::Maluku,
        91..=97 => Culture::Papua,
        _ => Culture::General,
    }
}

pub static GIVEN_MALE: &[&str] = &[
    "Budi", "Agus", "Ahmad", "Muhammad", "Dedi", "Eko", "Joko", "Andi", "Rudi", "Hendra", "Bambang",
    "Slamet", "Hadi", "Yusuf", "Rizki", "Fajar", "Arif", "Dimas", "Bayu", "Teguh", "Wahyu", "Irfan",
    "Gilang", "Rahmat", "Iwan", "Sutrisno", "Sugeng", "Hasan", "Ilham", "Reza", "Aditya", "Yoga", "Aris",
    "Dani", "Hari", "Taufik", "Imam", "Rizal", "Fikri", "Doni", "Galih", "Heru", "Yudi", "Surya",
    "Suparman", "Mulyadi", "Darmawan", "Krisna", "Bagus", "Putra",
];
pub static GIVEN_FEMALE: &[&str] = &[
    "Siti", "Dewi", "Putri", "Sri", "Nur", "Ayu", "Rina", "Wati", "Fitri", "Indah", "Lestari", "Ratna",
    "Yuni", "Sari", "Nurul", "Intan", "Maya", "Eka", "Rahayu", "Kartini", "Wulan", "Anisa", "Dian",
    "Novi", "Fitriani", "Mega", "Citra", "Tari", "Ani", "Endang", "Suryani", "Handayani", "Purnama",
    "Kurnia", "Puspita", "Aisyah", "Nabila", "Salsabila", "Zahra", "Melati", "Mawar", "Yanti", "Sumiati",
    "Tuti", "Hartini", "Larasati",
];
pub static SUNDA_MALE: &[&str] = &["Asep", "Ujang", "Dadang", "Cecep", "Deden", "Ade", "Encep", "Jajang", "Acep", "Yayan"];
pub static SUNDA_FEMALE: &[&str] = &["Euis", "Neneng", "Iis", "Enok", "Imas", "Cucu", "Elis", "Nining", "Ai", "Lilis"];
pub static SECOND_MALE: &[&str] = &[
    "Santoso", "Wibowo", "Susanto", "Prasetyo", "Setiawan", "Hidayat", "Saputra", "Kurniawan", "Nugroho",
    "Wijaya", "Gunawan", "Pratama", "Hartono", "Purnomo", "Rahman", "Hakim", "Firmansyah", "Ramadhan",
    "Syahputra", "Maulana", "Hermawan", "Permana", "Sudrajat", "Suryana", "Kusnadi", "Sulaiman",
    "Nasrullah", "Fauzi", "Wicaksono", "Budiman",
];
pub static SECOND_FEMALE: &[&str] = &[
    "Lestari", "Rahayu", "Wulandari", "Safitri", "Anggraini", "Permatasari", "Susanti", "Puspitasari",
    "Kusuma", "Handayani", "Maharani", "Utami", "Oktaviani", "Rahmawati", "Nurhayati", "Kurniasih",
    "Fitriyani", "Marlina", "Yuliani", "Setiawati", "Astuti", "Pertiwi", "Ningsih", "Saraswati",
    "Hasanah", "Aminah", "Fauziah", "Zulaikha",
];
pub static BATAK: &[&str] = &[
    "Siregar", "Nasution", "Lubis", "Harahap", "Simanjuntak", "Sitompul", "Hutapea", "Situmorang",
    "Sinaga", "Pardede", "Panjaitan", "Tambunan", "Manurung", "Sembiring", "Ginting", "Tarigan",
    "Simatupang", "Silalahi", "Pohan", "Hutagalung",
];
pub static MINANG: &[&str] = &["Chaniago", "Piliang", "Tanjung", "Koto", "Sikumbang", "Jambak", "Caniago", "Melayu"];
pub static MINAHASA: &[&str] = &["Rondonuwu", "Sumampouw", "Wowor", "Tumbelaka", "Pangemanan", "Lumentut", "Mandagi", "Sondakh", "Wenas", "Kaunang"];
pub static BUGIS: &[&str] = &["Daeng", "Mappa", "Rahim", "Latif", "Parenrengi", "Baso", "Ampa", "Tenri"];
pub static MALUKU: &[&str] = &["Pattinama", "Latuconsina", "Tuhumury", "Pattiasina", "Sahetapy", "Latumahina", "Ohorella", "Matulessy"];
pub static PAPUA: &[&str] = &["Wenda", "Kogoya", "Wonda", "Tabuni", "Rumbiak", "Mandowen", "Kaisiepo", "Wanimbo", "Yikwa", "Murib"];
pub static MALUKU_PAPUA_GIVEN_MALE: &[&str] = &["Yohanes", "Markus", "Yakob", "Paulus", "Petrus", "Daniel", "Samuel", "Yosef"];
pub static MALUKU_PAPUA_GIVEN_FEMALE: &[&str] = &["Maria", "Yohana", "Ester", "Ruth", "Magdalena", "Agustina", "Martha", "Debora"];
pub static BALI_ORDER: &[&[&str]] = &[&["Wayan", "Putu", "Gede"], &["Made", "Kadek"], &["Nyoman", "Komang"], &["Ketut"]];
pub static BALI_NAME_MALE: &[&str] = &["Sudarsana", "Artawan", "Suardana", "Mahendra", "Adi", "Budiarta", "Sukadana", "Wirawan", "Darma", "Arya"];
pub static BALI_NAME_FEMALE: &[&str] = &["Sriasih", "Ayu Lestari", "Sukmawati", "Wahyuni", "Ariani", "Sudarmi", "Sekar", "Candra", "Kartika", "Puspa"];

pub static STREETS: &[&str] = &[
    "Jl. Merdeka", "Jl. Jenderal Sudirman", "Jl. Diponegoro", "Jl. Gatot Subroto", "Jl. Ahmad Yani",
    "Jl. Pemuda", "Jl. Pahlawan", "Jl. Gajah Mada", "Jl. Hayam Wuruk", "Jl. Imam Bonjol", "Jl. Kartini",
    "Jl. Pattimura", "Jl. Teuku Umar", "Jl. Veteran", "Jl. Mawar", "Jl. Melati", "Jl. Kenanga",
    "Jl. Anggrek", "Jl. Flamboyan", "Jl. Cempaka", "Jl. Raya Pasar", "Jl. Masjid", "Jl. Sekolah",
    "Jl. Kebon Jeruk", "Jl. Nusantara", "Jl. Cendrawasih", "Jl. Rajawali", "Jl. Kutilang", "Gg. Mushola",
    "Gg. Damai", "Jl. Sisingamangaraja", "Jl. Hasanuddin",
];
pub static KECAMATAN: &[&str] = &[
    "Sukamaju", "Sukajadi", "Cibeunying", "Margahayu", "Tanjung Sari", "Suka Makmur", "Karang Anyar",
    "Sidomulyo", "Sumber Rejo", "Mekar Sari", "Bojong", "Cipayung", "Pasar Baru", "Kota Lama",
    "Kampung Baru", "Banjarsari", "Mulyorejo", "Tegalsari", "Pondok Aren", "Sungai Bambu", "Kedaton",
    "Rawamangun", "Padang Utara", "Sei Kera", "Tamalate", "Panakkukang", "Wenang", "Denpasar Barat",
    "Kuta Alam", "Medan Baru",
];
pub static KELURAHAN: &[&str] = &[
    "Sukasari", "Mekarjaya", "Sindangsari", "Sidorejo", "Kebonsari", "Karangsari", "Tanjungrejo",
    "Purwodadi", "Wonosari", "Jatimulyo", "Margasari", "Cempaka Putih", "Kampung Melayu", "Pasir Putih",
    "Sungai Pinang", "Lubuk Buaya", "Batu Ampar", "Air Hitam", "Talang Jambe", "Dauh Puri", "Tuminting",
    "Mariso", "Benteng", "Gunung Sari", "Pulo Gadung", "Rawa Buaya", "Cilandak", "Ngaliyan",
];

/// Mobile prefixes (Telkomsel, Indosat, XL, Tri, Smartfren), after "+62".
pub static MOBILE_PREFIXES: &[&str] = &[
    "811", "812", "813", "821", "822", "823", "852", "853", "851", "814", "815", "816", "855", "856",
    "857", "858", "817", "818", "819", "859", "877", "878", "895", "896", "897", "898", "881", "882",
    "883", "838", "831",
];

/// Chief complaints: ICD-10 code, ICD-10 display, Indonesian anamnesis text, relative weight.
pub static COMPLAINTS: &[(&str, &str, &str, u32)] = &[
    ("U07.1", "COVID-19, virus identified", "Demam, batuk kering dan anosmia sejak 3 hari; kontak erat dengan kasus konfirmasi", 14),
    ("U07.2", "COVID-19, virus not identified", "Demam dan nyeri tenggorokan, riwayat perjalanan ke zona merah", 6),
    ("Z20.8", "Contact with and exposure to other communicable diseases", "Kontak erat kasus COVID-19 serumah, tanpa keluhan", 8),
    ("J06.9", "Acute upper respiratory infection, unspecified", "Batuk pilek dan demam ringan sejak 2 hari", 16),
    ("J18.9", "Pneumonia, unspecified", "Sesak napas, demam tinggi dan batuk berdahak sejak 5 hari", 5),
    ("R50.9", "Fever, unspecified", "Demam naik turun sejak 3 hari, nafsu makan menurun", 7),
    ("R05", "Cough", "Batuk lebih dari seminggu, tidak ada sesak", 5),
    ("R51", "Headache", "Sakit kepala berdenyut sejak pagi", 4),
    ("A09", "Diarrhoea and gastroenteritis of presumed infectious origin", "Diare cair lebih dari 5 kali sehari disertai mual", 6),
    ("A91", "Dengue haemorrhagic fever", "Demam tinggi mendadak 4 hari, bintik merah di lengan, mimisan", 3),
    ("I10", "Essential (primary) hypertension", "Kontrol rutin hipertensi, tengkuk terasa berat", 9),
    ("E11.9", "Type 2 diabetes mellitus without complications", "Kontrol gula darah, sering haus dan buang air kecil", 7),
    ("K30", "Dyspepsia", "Nyeri ulu hati dan kembung setelah makan", 5),
    ("M54.5", "Low back pain", "Nyeri pinggang bawah setelah mengangkat beban", 3),
    ("J45.9", "Asthma, unspecified", "Sesak napas berbunyi mengi saat malam hari", 2),
];

/// Facility kinds: name prefix, HL7 organization-type code.
pub static FACILITY_KINDS: &[(&str, &str)] = &[("RSUD", "prov"), ("Puskesmas", "prov"), ("Klinik Pratama", "prov"), ("RS Swasta", "prov")];
